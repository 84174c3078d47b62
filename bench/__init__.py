"""Benchmarks: each script prints a table, writes JSON under docs/results/, and records how it ran."""
