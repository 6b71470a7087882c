"""Benchmarks of mcla-jax against reference implementations (`python -m benchmarks.run`)."""
