"""Benchmarks: speed, bytes and accuracy, run by hand; results go to docs/benchmarks.md."""
