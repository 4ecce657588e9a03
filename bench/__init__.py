"""Benchmarks: in-process stage timings, an HTTP load generator, peer servers, comparisons.

Run each as a module from the repository root, e.g. ``python -m bench.inprocess``. Results
land in ``bench/out/`` (git-ignored).
"""
