"""Benchmarks of resnas (run as `python -m bench.<name>`)."""
