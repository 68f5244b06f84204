"""The JAX BBOB functions against the reference implementation, cocoex (coco-experiment 2.8.2).

Every function, instances 1-15, dimensions 2, 3, 5, 10, 20, 40, at random points
inside and outside [-5, 5]^D and next to the optimum. The comparison runs in
float64 (inside ``jax.enable_x64``, so other tests keep float32).
"""

from __future__ import annotations

import cocoex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll.problems import bbob

DIMENSIONS = (2, 3, 5, 10, 20, 40)
INSTANCES = tuple(range(1, 16))

cocoex.log_level("error")


def _points(rng: np.random.Generator, xopt: np.ndarray) -> np.ndarray:
    """Points per problem: 6 in [-5, 5]^D, 3 in [-9, 9]^D (mostly outside), 2 near and 1 at the optimum."""
    n_prob, d = xopt.shape
    inside = rng.uniform(-5.0, 5.0, size=(n_prob, 6, d))
    outside = rng.uniform(-9.0, 9.0, size=(n_prob, 3, d))
    near = xopt[:, None, :] + rng.normal(scale=1e-3, size=(n_prob, 2, d))
    return np.concatenate([inside, outside, near, xopt[:, None, :]], axis=1)


def test_a_point_holding_nan_is_nan_as_in_cocoex() -> None:
    """Found by an audit: f2, f3, f5, f6, f10, f11 and f15 gave 0.0 (the optimum) at an all-NaN point, and the runner
    credited a diverged strategy with solving them at its first evaluation; COCO gives NaN."""
    d = 3
    x = np.full(d, np.nan)
    x_part = np.where(np.arange(d) == 1, np.nan, 0.5)  # one NaN coordinate
    for fid in range(1, 25):
        problem = cocoex.BareProblem("bbob", fid, d, 1)
        assert np.isnan(problem(x)) and np.isnan(problem(x_part))
    for points in (x, x_part):
        values = bbob.BBOBSuite("1-24", "1", d).evaluate(jnp.broadcast_to(points, (24, d)), subtract_fopt=True)
        assert np.all(np.isnan(np.asarray(values))), np.asarray(values)
    data = jax.tree.map(jnp.asarray, bbob.BBOBSuite("1-24", "1", d).data)
    traced = jax.vmap(bbob.evaluate, in_axes=(0, None))(data, jnp.asarray(x))  # lax.switch on a traced id
    assert np.all(np.isnan(np.asarray(traced)))


def test_a_point_holding_inf_is_inf_as_in_cocoex() -> None:
    """COCO gives +inf at a point with an infinite coordinate (checked before NaN); rotations gave NaN (inf - inf)."""
    d = 3
    points = np.array([[np.inf, 0.5, 0.5], [0.5, -np.inf, 0.5], [np.inf, np.nan, 0.5]])
    for fid in range(1, 25):
        problem = cocoex.BareProblem("bbob", fid, d, 1)
        assert all(problem(x) == np.inf for x in points)
    suite = bbob.BBOBSuite("1-24", "1", d)
    data = jax.tree.map(jnp.asarray, suite.data)
    for x in points:
        values = suite.evaluate(jnp.broadcast_to(x, (24, d)), subtract_fopt=True)
        assert np.all(np.asarray(values) == np.inf), np.asarray(values)
        traced = jax.vmap(bbob.evaluate, in_axes=(0, None))(data, jnp.asarray(x))  # lax.switch on a traced id
        assert np.all(np.asarray(traced) == np.inf), np.asarray(traced)
    assert float(bbob.bbob_function(5, 1, d)(jnp.asarray(points[0]))) == np.inf  # f5 gave a finite value


@pytest.mark.parametrize("dimension", DIMENSIONS)
def test_matches_cocoex_all_functions_instances_1_to_15(dimension: int) -> None:
    rng = np.random.default_rng(dimension)
    suite = bbob.BBOBSuite(range(1, 25), INSTANCES, dimension)
    x = _points(rng, suite.xopt)
    with jax.enable_x64(True):
        got = np.asarray(suite.evaluate_each(jnp.asarray(x, jnp.float64)))
    assert got.dtype == np.float64
    coco = cocoex.Suite("bbob", "instances: 1-15", f"dimensions: {dimension}")
    ref = np.empty_like(got)
    seen = set()
    for problem in coco:
        k = suite.problems.index((problem.id_function, problem.id_instance))
        seen.add(k)
        ref[k] = [problem(xi) for xi in x[k]]
    assert seen == set(range(len(suite)))  # every (function, instance) was compared
    precision = np.abs(ref - suite.fopt[:, None])
    err = np.abs(got - ref)
    ok = err <= 1e-6 * precision + 1e-8  # relative to f - fopt, absolute 1e-8 at the optimum
    bad = np.argwhere(~ok)
    assert ok.all(), [
        (suite.problems[k], j, got[k, j], ref[k, j]) for k, j in bad[:10]
    ]  # (function, instance), point, ours, cocoex


def test_optimum_and_fopt_match_cocoex() -> None:
    for dimension in (2, 10):
        suite = bbob.BBOBSuite("1-24", "1-15", dimension)
        for k, (f, i) in enumerate(suite.problems):
            problem = cocoex.BareProblem("bbob", f, dimension, i)
            np.testing.assert_allclose(suite.xopt[k], problem.best_parameter(), atol=1e-9, err_msg=f"f{f} i{i}")
            np.testing.assert_allclose(suite.fopt[k], problem(np.asarray(problem.best_parameter())), atol=1e-8)


def test_vmap_over_function_and_instance_with_traced_ids() -> None:
    """One compiled call over a stacked batch of different functions (lax.switch on a traced id)."""
    d = 5
    suite = bbob.BBOBSuite("1-24", "1,2", d)
    rng = np.random.default_rng(0)
    x = rng.uniform(-5, 5, size=(16, d))
    with jax.enable_x64(True):
        data = jax.tree.map(jnp.asarray, suite.data)
        per_problem = jax.jit(jax.vmap(bbob.evaluate, in_axes=(0, None)))(data, jnp.asarray(x))
        grouped = suite.evaluate(jnp.asarray(x))
    assert per_problem.shape == (48, 16)
    np.testing.assert_allclose(np.asarray(per_problem), np.asarray(grouped), rtol=1e-12, atol=1e-12)
    ref = np.array([cocoex.BareProblem("bbob", 17, d, 2)(xi) for xi in x])
    np.testing.assert_allclose(np.asarray(per_problem)[suite.problems.index((17, 2))], ref, rtol=1e-9)


def test_bbob_function_jit_batch_and_float32() -> None:
    f = bbob.bbob_function(10, instance=3, dimension=4)
    ref = cocoex.BareProblem("bbob", 10, 4, 3)
    x = np.random.default_rng(1).uniform(-4, 4, size=(7, 4)).astype(np.float32)
    batch = np.asarray(f(x))
    assert batch.shape == (7,) and batch.dtype == np.float32
    single = np.asarray([f(xi) for xi in x])
    np.testing.assert_allclose(batch, single, rtol=1e-6)
    np.testing.assert_allclose(batch, [ref(xi.astype(np.float64)) for xi in x], rtol=1e-4)
    delta = bbob.bbob_function(10, instance=3, dimension=4, subtract_fopt=True)
    np.testing.assert_allclose(np.asarray(delta(x)) + f.instance.fopt, batch, rtol=1e-5)
    # under jit with a traced point
    np.testing.assert_allclose(np.asarray(jax.jit(f)(jnp.asarray(x[0]))), batch[0], rtol=1e-6)


def test_coco_rng_primitives() -> None:
    u = bbob.unif(1000, 12345)
    assert u.min() > 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.03
    np.testing.assert_array_equal(u, bbob.unif(1000, 12345))  # deterministic
    r = bbob.rotation(7, 13)
    np.testing.assert_allclose(r @ r.T, np.eye(13), atol=1e-12)
    x = bbob.xopt(11, 20)
    assert np.all(np.abs(x) <= 4) and np.allclose(np.round(x * 1e4) / 1e4, x)
    assert bbob.fopt(4, 1) == bbob.fopt(3, 1)  # f4 draws its fopt with f3's seed, as COCO does


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 1, 10), "Unknown BBOB function id 0"),
        ((25, 1, 10), "Unknown BBOB function id 25"),
        ((101, 1, 10), "noiseless suite"),
        ((1, 0, 10), "Invalid BBOB instance id 0"),
        ((1, 1, 1), "Unsupported BBOB dimension 1"),
        ((1, 1, 41), "Unsupported BBOB dimension 41"),
        ((1.5, 1, 10), "function id must be an integer"),
    ],
)
def test_bad_ids_raise_clear_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bbob.make_instance(*args)


def test_bad_points_raise_clear_errors() -> None:
    f = bbob.bbob_function(1, 1, 3)
    with pytest.raises(ValueError, match=r"shape \(4,\) but this problem is 3-dimensional"):
        f(jnp.zeros(4))
    with pytest.raises(ValueError, match="floating dtype, got int32"):
        f(jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="floating dtype"):
        f(np.array(["a", "b", "c"]))
    suite = bbob.BBOBSuite("1-2", "1", 3)
    with pytest.raises(ValueError, match="one batch of points per problem"):
        suite.evaluate_each(jnp.zeros((3, 5, 3)))
    with pytest.raises(ValueError, match="different dimensions"):
        bbob.stack_instances([bbob.make_instance(1, 1, 2), bbob.make_instance(1, 1, 3)])
    with pytest.raises(ValueError, match="Cannot parse id range"):
        bbob.parse_ids("1-x")
    # a list of Python numbers is accepted
    assert float(f([0.0, 0.0, 0.0])) == pytest.approx(cocoex.BareProblem("bbob", 1, 3, 1)(np.zeros(3)), rel=1e-5)
