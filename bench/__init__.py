"""Benchmarks: each runs as `python -m bench NAME` and prints a table, then one line of JSON."""
