"""Benchmarks that print numbers: `python -m sglbench.bench WORKLOAD [options]`."""
