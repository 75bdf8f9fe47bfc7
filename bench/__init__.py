"""enrollstream benchmarks (issue 7): each role against the raw baseline that bounds it, in one run.

`python -m bench` (or `make bench`) runs the full sizes, `--quick` (`make bench-quick`) small ones; both
print a table and write `bench/results.json`. Benchmarks report, they never gate.
"""
