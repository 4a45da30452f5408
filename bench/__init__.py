"""Benchmark suite of titan_phases: phased step cost against stock torchtitan and the FLOP ideal.

Run ``python -m bench.run`` (see BENCHMARKS.md). Not part of the installed package.
"""
