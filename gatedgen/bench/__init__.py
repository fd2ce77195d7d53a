"""Benchmarks behind `gatedgen bench` (commands, never timed tests)."""
