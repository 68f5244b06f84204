"""Test configuration shared by every test module.

Eight fake CPU devices are requested before JAX is imported, so the sharding
tests can build real meshes on this CPU-only machine (equinox and optax do
the same). Rank promotion raises, to catch silent broadcasting mistakes.

Each pytest process (the suite runs on two workers, see ``addopts`` in
pyproject.toml) keeps one persistent JAX compilation cache, shared with the
commands its tests start (they inherit the environment): the CLI tests run the
same command several times (an uninterrupted run, a run stopped by SIGTERM, its
resume) and each process would otherwise compile the same programs again; with
the cache the whole suite needs a fifth less CPU time. Programs that compile in
under a second are not cached (JAX's default), so the in-process tests do not
pay for writing thousands of small entries. The cache starts empty in a
temporary folder and is removed at the end, so no test depends on an earlier
session; a cached executable is the one XLA compiled, so results are unchanged.
Set ``JAX_COMPILATION_CACHE_DIR`` yourself to choose the folder (it is then kept).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MPLBACKEND", "Agg")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="eggroll-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def exact_matmuls():
    """float32 matmuls at full precision: on a GPU JAX's default is TF32, which agrees with float32 to
    about 1e-3 only (the H100 run in benchmarks/results/gpu/README.md); on the CPU nothing changes."""
    with jax.default_matmul_precision("highest"):
        yield
