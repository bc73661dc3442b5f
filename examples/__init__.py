"""Runnable examples (importable, so that tests and mypy can reach them)."""
