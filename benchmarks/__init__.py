"""Benchmarks of featurelens against plain baselines (``make bench``; see BENCHMARKS.md).

Every figure is a ratio against a plain baseline measured in the same run, median of several
repetitions, because the machines these run on are shared and absolute times are noisy.
"""
