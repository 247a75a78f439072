"""Benchmarks that compare us with other frameworks (python -m bench.NAME)."""
