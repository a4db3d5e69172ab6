"""Speed and memory benchmarks; run with `nox -s bench` or `python -m benchmarks [--quick]`."""
