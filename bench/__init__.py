"""NSA benchmarks: registered workloads, a FLOP/byte model, a gated runner, plots and reports.

Run from the repository root: `python -m bench --help` (bench/README.md).
"""
