"""Packaging: the metadata lives in pyproject.toml; this file only adds the benchmarks.

``benchmarks/`` stays where the repository keeps it (``python -m benchmarks...`` and other
branches edit it in place) and is shipped inside the package as ``mmsb_jax.benchmarks``, so
that ``mmsb bench`` works from an installed, non-editable package too.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mmsb_jax*", "pallas_kernels*"]) + ["mmsb_jax.benchmarks"],
    package_dir={"mmsb_jax.benchmarks": "benchmarks"},
)
