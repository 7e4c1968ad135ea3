"""Benchmarks run by ``mmsb bench``: each case measures mmsb_jax and a baseline side by side."""
