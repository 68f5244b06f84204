"""benchmarks/lowrank_estimator.py: EGGROLL's estimate approaches the full-rank ES one as the rank grows.

A tiny case of the benchmark's core function (the library's ``eggroll`` and ``open_es``
strategies, one ask / evaluate / tell per estimate) on the quartic whose smoothed gradients
are known exactly: ``G + W^3 + kappa sigma^2 W`` with ``kappa = 3 + 6 / r`` for rank ``r``.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "lowrank_estimator.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lowrank_estimator", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(bench):
    problem = bench.quartic_problem(size=8, sigma=0.5)
    return bench.study(problem, ranks=(1, 8), populations=(2048,), seeds=3, ref_seeds=6)


def test_cosine_rises_with_rank(result):
    cos = result["cos_full"]
    r1, r8, full = (cos[k]["2048"][0] for k in ("1", "8", "full"))
    assert r1 + 0.02 < r8 <= full + 0.02, cos
    assert result["cos_true"]["1"]["2048"][0] < result["cos_true"]["8"]["2048"][0]


def test_expectation_gap_shrinks_like_one_over_rank(result):
    gap, raw, exact = result["gap"], result["gap_raw"], result["gap_exact"]
    # the closed form is exactly C / r ...
    assert exact["1"] == pytest.approx(8 * exact["8"], rel=1e-9)
    # ... and the library's rank-1 estimate (6 x 2048 members, Monte Carlo floor removed) shows that gap,
    # well above rank 8's
    assert 0.5 * exact["1"] < gap["1"] < 2 * exact["1"], (gap, exact)
    assert raw["8"] < 0.5 * raw["1"]
    assert np.isfinite(result["fit_C"]) and result["fit_C"] > 0
