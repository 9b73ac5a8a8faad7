"""Benchmarks, run by hand rather than by pytest: `python -m bench.<name>` (bench/results/)."""
