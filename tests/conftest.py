"""Test configuration shared by every test module.

Eight fake CPU devices are requested before JAX is imported, so the sharding
tests can build real meshes on this CPU-only machine (equinox and optax do
the same). Rank promotion raises, to catch silent broadcasting mistakes.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def exact_matmuls():
    """float32 matmuls at full precision: on a GPU JAX's default is TF32, which agrees with float32 to
    about 1e-3 only (the H100 run in benchmarks/results/gpu/README.md); on the CPU nothing changes."""
    with jax.default_matmul_precision("highest"):
        yield
