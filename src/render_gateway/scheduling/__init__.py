"""Scheduling: priority lanes with exact positions, circuit breakers, per-customer rate limits."""
