"""COCO's ``bbob-largescale`` and ``bbob-mixint`` suites against cocoex 2.8.2, all 24 functions.

The values must agree to float64 rounding: 1e-9 relative to ``f - fopt`` (plus ``1e-13 max(1, |fopt|)``
absolute, for the rounding of ``fopt`` and of terms that cancel next to the optimum). Here: instances 1-15
at largescale 20-D and mixint 5-D (the permutations are the identity, one block), and instances 1 and 7
at largescale 640-D (16 blocks, 640-swap permutations) and mixint 80-D (the largescale functions under the
discretisation). Each dimension compiles the 24 functions (~10 s on 2 cores), so the other dimensions
are left to ``benchmarks/bbob_suites_sweep.py``, which runs every suite dimension with instances 1-15.
"""

from __future__ import annotations

import cocoex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll.problems import bbob
from eggroll.problems.bbob import largescale

cocoex.log_level("error")


def _points(rng: np.random.Generator, xopt: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """4 points in the region of interest, 1 beyond it by 4 (penalised), 2 within 1e-3 of the optimum, the optimum."""
    n_prob, d = xopt.shape
    inside = rng.uniform(low, high, size=(n_prob, 4, d))
    outside = rng.uniform(low - 4.0, high + 4.0, size=(n_prob, 1, d))
    near = xopt[:, None, :] + rng.normal(scale=1e-3, size=(n_prob, 2, d))
    return np.concatenate([inside, outside, near, xopt[:, None, :]], axis=1)


def compare_with_cocoex(suite_name: str, dimension: int, instances: str = "1-15") -> dict[str, float]:
    """Evaluates every problem of ``suite_name`` here and in cocoex at the same points; returns the worst error.

    Raises:
        AssertionError: if any value differs by more than 1e-9 relative to ``f - fopt``.
    """
    suite = bbob.BBOBSuite(None, instances, dimension, suite=suite_name)
    coco = cocoex.Suite(suite_name, f"instances: {instances}", f"dimensions: {dimension}")
    ids, low, high = [], [], []
    for p in coco:  # cocoex frees a problem when the loop moves on: copy what is needed
        ids.append((p.id_function, p.id_instance))
        low.append(np.array(p.lower_bounds))
        high.append(np.array(p.upper_bounds))
    assert ids == suite.problems
    x = _points(np.random.default_rng(7 + dimension), suite.xopt, np.array(low)[:, None], np.array(high)[:, None])
    with jax.enable_x64(True):
        got = np.asarray(suite.evaluate_each(jnp.asarray(x)))
    ref = np.array([[problem(xi) for xi in x[k]] for k, problem in enumerate(coco)])
    fopt = suite.fopt[:, None]
    rel = np.abs(got - ref) / (np.abs(ref - fopt) + 1e-4 * np.maximum(1.0, np.abs(fopt)))  # 1e-4: 1e-13 / 1e-9
    worst = np.unravel_index(np.argmax(rel), rel.shape)
    assert rel.max() <= 1e-9, (
        f"{suite_name} {dimension}-D f{suite.problems[worst[0]][0]} i{suite.problems[worst[0]][1]} point {worst[1]}: "
        f"{got[worst]!r} vs cocoex {ref[worst]!r} (relative {rel.max():.2e})"
    )
    # the optimum is the optimum: f(xopt) = fopt, as COCO reports it
    np.testing.assert_allclose(got[:, -1], suite.fopt, rtol=0, atol=1e-8 * np.maximum(1.0, np.abs(suite.fopt)).max())
    return {"max_relative_error": float(rel.max()), "problems": len(suite), "points": int(x.shape[1])}


def test_largescale_matches_cocoex_all_instances():
    compare_with_cocoex("bbob-largescale", 20)


def test_largescale_matches_cocoex_permuted_blocks():
    compare_with_cocoex("bbob-largescale", 640, "1,7")  # 16 blocks, permutations of 640 swaps


def test_mixint_matches_cocoex_all_instances():
    compare_with_cocoex("bbob-mixint", 5)


def test_mixint_matches_cocoex_largescale_inner():
    compare_with_cocoex("bbob-mixint", 80, "1,7")  # from 50-D on, mixint wraps the largescale functions


def test_permuted_block_rotation_is_compact_and_orthogonal():
    # 640-D: 16 blocks of 40, never a 640 x 640 matrix; the permutations are real permutations, not the identity
    inst = bbob.make_instance(15, 3, 640, suite="bbob-largescale")
    assert inst.r_blocks.shape == (16, 40, 40) and inst.q_blocks.shape == (16, 40, 40)
    for blocks in (inst.r_blocks, inst.q_blocks):
        np.testing.assert_allclose(
            np.einsum("kij,kil->kjl", blocks, blocks), np.broadcast_to(np.eye(40), (16, 40, 40)), atol=1e-12
        )
    for perm in (inst.r_in, inst.r_out, inst.q_in, inst.q_out):
        assert sorted(perm.tolist()) == list(range(640)) and (perm != np.arange(640)).any()
    assert largescale.block_sizes(100) == (40, 40, 20)
    assert (largescale.swap_permutation(5, 40) == np.arange(40)).all()  # identity up to 40-D, as in COCO


def test_mixint_points_are_integers_and_bad_ids_refused():
    inst = bbob.make_instance(3, 2, 10, suite="bbob-mixint")
    integer = inst.xopt[:8]
    assert (integer == np.round(integer)).all() and (integer <= np.repeat([1, 3, 7, 15], 2)).all()
    f = bbob.bbob_function(3, 2, 10, suite="bbob-mixint")
    x = jnp.asarray(inst.xopt, jnp.float32)
    assert float(f(x)) == pytest.approx(float(f(x + jnp.r_[jnp.full(8, 0.3), jnp.zeros(2)])))  # rounding
    with pytest.raises(ValueError, match="multiple of 5"):
        bbob.BBOBSuite("1", "1", 12, suite="bbob-mixint")
    with pytest.raises(ValueError, match="2..640"):
        bbob.BBOBSuite("1", "1", 1280, suite="bbob-largescale")
    with pytest.raises(ValueError, match="functions 1..24"):
        bbob.BBOBSuite("101", "1", 20, suite="bbob-largescale")
