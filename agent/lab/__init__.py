"""Throw-away local networks for demos, tests and benchmarks."""
