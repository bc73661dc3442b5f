"""Exporting pool statistics to monitoring systems (one module per system)."""
