"""Smoke tests of the benchmark harness (bench/): fast runs on tiny tasks, no timing assertions."""
