"""Benchmarks of the web app, run as modules (`python -m bench.load`, `bench.scale`, `bench.editor`); each prints
its figures beside a baseline measured in the same run. Not tests: the figures depend on the machine."""
