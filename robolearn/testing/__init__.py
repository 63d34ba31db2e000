"""Reusable test suites for implementations of robolearn contracts (needs pytest)."""
