"""COCO's ``bbob-noisy`` suite (f101-f130) against cocoex 2.8.2, noise included, draw for draw.

cocoex draws the noise from two global counters that a new ``cocoex.Suite`` resets to 30 and every
noisy evaluation advances; :meth:`BBOBSuite.coco_noise_seeds` gives the counters each evaluation
sees when the problems are evaluated in suite order, so the noisy values must agree exactly (to
float64 rounding, 1e-9 relative to ``f - fopt``). All 30 functions, instances 1-15, dimensions
2, 10, 40 here; ``benchmarks/bbob_suites_sweep.py`` runs the same check on every dimension 2..40.
"""

from __future__ import annotations

import cocoex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll.problems import bbob
from eggroll.problems.bbob import noise

cocoex.log_level("error")

DIMENSIONS = (2, 10, 40)  # every dimension 2..40: benchmarks/bbob_suites_sweep.py
FUNCTIONS = tuple(range(101, 131))


def _points(rng: np.random.Generator, xopt: np.ndarray) -> np.ndarray:
    """5 points in [-5, 5]^D, 2 in [-9, 9]^D (mostly outside, penalised), 2 within 1e-3 of the optimum, the optimum."""
    n_prob, d = xopt.shape
    inside = rng.uniform(-5.0, 5.0, size=(n_prob, 5, d))
    outside = rng.uniform(-9.0, 9.0, size=(n_prob, 2, d))
    near = xopt[:, None, :] + rng.normal(scale=1e-3, size=(n_prob, 2, d))
    return np.concatenate([inside, outside, near, xopt[:, None, :]], axis=1)


def compare_with_cocoex(dimension: int, instances: str = "1-15") -> dict[str, float]:
    """Evaluates every bbob-noisy problem at the same points here and in cocoex; returns the worst errors.

    Raises:
        AssertionError: if any value differs by more than 1e-9 relative to ``f - fopt``.
    """
    suite = bbob.BBOBSuite(FUNCTIONS, instances, dimension, suite="bbob-noisy")
    x = _points(np.random.default_rng(100 + dimension), suite.xopt)
    seeds = suite.coco_noise_seeds(x.shape[1])
    with jax.enable_x64(True):
        got = np.asarray(suite.evaluate_each(jnp.asarray(x), noise_seeds=seeds))
    coco = cocoex.Suite("bbob-noisy", f"instances: {instances}", f"dimensions: {dimension}")  # resets the counters
    order = [(p.id_function, p.id_instance) for p in coco]
    assert order == suite.problems  # same evaluation order, so the same noise counters
    ref = np.array([[problem(xi) for xi in x[k]] for k, problem in enumerate(coco)])
    fopt = suite.fopt[:, None]
    # 1e-9 relative to f - fopt, plus 1e-13 max(1, |fopt|) absolute for the rounding of fopt and of terms
    # that cancel next to the optimum (Griewank-Rosenbrock's 1 - cos t, a few ulp of 1); the uniform model
    # multiplies f - fopt by (1e9 / (f - fopt))^alpha, which turns the last digits of a tiny f - fopt (the two
    # points next to the optimum, and the optimum itself, where it is COCO's rounding error) into relative
    # differences up to 1e-6
    uniform = np.array([(f - 101) % 3 == 1 for f, _ in suite.problems])
    err = np.abs(got - ref)
    rel = err / (np.abs(ref - fopt) + 1e-4 * np.maximum(1.0, np.abs(fopt)))  # 1e-4: 1e-13 / 1e-9
    near_uniform = rel[uniform, -3:-1]
    assert near_uniform.max() <= 1e-6, near_uniform.max()
    rel[uniform, -3:] = 0.0
    bad = np.argwhere(rel > 1e-9)
    assert bad.size == 0, [(suite.problems[k], j, got[k, j], ref[k, j]) for k, j in bad[:10]]
    # at the optimum the noise-free part is 0: Gaussian noise multiplies it (f - fopt = the 1.01e-8 COCO adds),
    # every model reports at least that floor
    gaussian = np.array([(f - 101) % 3 == 0 for f, _ in suite.problems])
    np.testing.assert_allclose(got[gaussian, -1] - fopt[gaussian, 0], 1.01e-8, rtol=1e-4)
    assert np.all(got[:, -1] - fopt[:, 0] >= 1.01e-8 * (1 - 1e-4))
    return {
        "max_relative_error": float(rel.max()),
        "max_relative_error_uniform_near_optimum": float(near_uniform.max()),
        "problems": len(suite),
        "points": int(x.shape[1]),
    }


@pytest.mark.parametrize("dimension", DIMENSIONS)
def test_noisy_suite_matches_cocoex_noise_included(dimension: int) -> None:
    assert compare_with_cocoex(dimension)["max_relative_error"] <= 1e-9


def test_legacy_generator_in_jax_equals_coco_rng() -> None:
    seeds = np.array([1, 31, 32, 12345, 999_999_999, 10**9])
    with jax.enable_x64(True):
        u = np.asarray(jax.vmap(lambda s: noise.legacy_unif(s, jnp.float64))(jnp.asarray(seeds, jnp.int32)))
        g = np.asarray(jax.jit(jax.vmap(lambda s: noise.legacy_gauss(s, jnp.float64)))(jnp.asarray(seeds, jnp.int32)))
    np.testing.assert_array_equal(u, [bbob.unif(1, s)[0] for s in seeds])
    np.testing.assert_allclose(g, [bbob.gauss(1, s)[0] for s in seeds], rtol=1e-15)


def test_noise_counters_advance_like_coco() -> None:
    useed, nseed = noise.coco_noise_seeds([101, 102, 103], 2)
    # Gaussian: one normal per evaluation; uniform: two uniforms; Cauchy: one uniform and two normals
    np.testing.assert_array_equal(useed, [[30, 30], [30, 32], [34, 35]])
    np.testing.assert_array_equal(nseed, [[30, 31], [32, 32], [32, 34]])
    # COCO wraps a counter above 1e9 back to 1
    useed, _ = noise.coco_noise_seeds([102], 2, start=(10**9 - 1, 30))
    np.testing.assert_array_equal(useed, [[10**9 - 1, 1]])


def test_noisy_values_jit_and_vmap_over_traced_seeds_in_float32() -> None:
    suite = bbob.BBOBSuite("101,108,130", "1", 4, suite="bbob-noisy")
    x = jnp.asarray(np.random.default_rng(0).uniform(-4, 4, size=(3, 6, 4)), jnp.float32)
    seeds = suite.coco_noise_seeds(6)
    f32 = np.asarray(suite.evaluate_each(x, noise_seeds=seeds))
    assert f32.dtype == np.float32 and np.all(np.isfinite(f32))
    with jax.enable_x64(True):
        f64 = np.asarray(suite.evaluate_each(jnp.asarray(x, jnp.float64), noise_seeds=seeds))
    np.testing.assert_allclose(f32, f64, rtol=1e-4)
    other = np.asarray(suite.evaluate_each(x, noise_seeds=(seeds[0] + 1000, seeds[1] + 1000)))
    assert np.all(other[:2] != f32[:2])  # other counters, other Gaussian and uniform noise
    # Cauchy noise adds 1000 alpha (alpha = 1 on f130) except for the outliers a 0.2 chance brings
    with jax.enable_x64(True):
        clean = np.asarray(suite.evaluate_each(jnp.asarray(x, jnp.float64)))
    np.testing.assert_allclose(np.median(f64[2] - clean[2]), 1000.0, rtol=1e-6)


def test_noisy_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="Unknown bbob-noisy function id 5"):
        bbob.BBOBSuite("5", "1", 3, suite="bbob-noisy")
    with pytest.raises(ValueError, match="Unknown BBOB function id 101"):
        bbob.make_instance(101, 1, 3)
    with pytest.raises(ValueError, match="Unknown COCO suite 'bbob-noisey'"):
        bbob.BBOBSuite("101", "1", 3, suite="bbob-noisey")
    noisy = bbob.BBOBSuite("101", "1", 3, suite="bbob-noisy")
    with pytest.raises(ValueError, match=r"integers of shape \(1, 2\)"):
        noisy.evaluate_each(jnp.zeros((1, 2, 3)), noise_seeds=(np.zeros((1, 3), int), np.zeros((1, 3), int)))
    with pytest.raises(ValueError, match="noise_seeds is for suite='bbob-noisy'"):
        bbob.BBOBSuite("1", "1", 3).evaluate(jnp.zeros((2, 3)), noise_seeds=(np.zeros((1, 2), int),) * 2)
