"""Serve replicas that batch concurrent requests into one encoder pass."""
