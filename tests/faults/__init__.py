"""Fault-injection tests: each starts its own PostgreSQL and breaks it on purpose."""
