"""Benchmarks: `python -m benchmarks [NAME ...]` (or `make bench`) writes one JSON per benchmark
under reports/bench/: {name, value, unit, goal, ok, ...details}. Benchmarks are not tests: they
measure, they never assert."""
