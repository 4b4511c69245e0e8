"""Benchmarks of issue 6, run on demand (not part of pytest): ``python -m benchmarks.<name>``."""
