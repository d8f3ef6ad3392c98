"""Benchmarks, run from the repository root as modules (``python3 -m
bench.bench_network``), so that ``fxnn`` is the checkout's package; not
installed."""
