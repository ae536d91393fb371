"""Delivery: the scheduler decides when and how much; transports only deliver and report."""
