"""Benchmark scripts that print timings (run them with ``python -m vla_ros.bench.NAME``)."""
