"""Reliability tests: the exchange under crashes, outages and concurrency (slow, bounded)."""
