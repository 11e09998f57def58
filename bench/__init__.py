"""Benchmarks (scripts, not tests): run each as a module from the repository root, e.g. `python -m bench.serving`."""
