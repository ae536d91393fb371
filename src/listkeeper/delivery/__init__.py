"""Delivery: the queue runner decides when; transports only deliver and report."""
