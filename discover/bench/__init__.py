"""Benchmarks: every figure in the README comes from one of these (`discover bench ...`)."""
