"""EGGROLL in an unchanged evosax loop, on evosax's own problems (``dense_population=True``).

The loop is evosax 0.3's, as its users write it: ``problem.eval`` vmaps over a
stacked population. With ``dense_population=True`` EGGROLL's ``ask`` returns
exactly that; the result equals the default low-rank population materialised
by hand (``es.materialize``) to float32 rounding (``tell`` reads the stacked
members, which the two ways of materialising may round differently in the
last bit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from evosax.problems import BBOBProblem, GymnaxProblem
from evosax.problems.networks import MLP

import eggroll

GENERATIONS = 16


def _problem(kind):
    if kind == "bbob_sphere":
        return BBOBProblem(fn_name="sphere", num_dims=2, seed=0)
    policy = MLP(layer_sizes=(8, 2))  # evosax's own policy network: a categorical action from logits
    return GymnaxProblem(env_name="CartPole-v1", policy=policy, episode_length=50, num_rollouts=1)


def _python_loop(es, prob, key, materialize_by_hand=False):
    """The evosax loop, unchanged (``materialize_by_hand``: the pre-switch workaround, as the reference)."""
    key, k_sample, k_init, k_prob = jax.random.split(key, 4)
    params = es.default_params
    state = es.init(k_init, prob.sample(k_sample), params)
    pstate = prob.init(k_prob)
    fits = []
    for _ in range(GENERATIONS):
        key, k_ask, k_eval, k_tell = jax.random.split(key, 4)
        pop, state = es.ask(k_ask, state, params)
        if materialize_by_hand:
            pop = es.materialize(pop)
        fit, pstate, _ = prob.eval(k_eval, pop, pstate)
        state, metrics = es.tell(k_tell, pop, fit, state, params)
        fits.append(float(jnp.mean(fit)))
    return state, fits


def _scan_loop(es, prob, key):
    key, k_sample, k_init, k_prob = jax.random.split(key, 4)
    params = es.default_params
    state = es.init(k_init, prob.sample(k_sample), params)
    pstate = prob.init(k_prob)

    def step(carry, key):
        state, pstate = carry
        k_ask, k_eval, k_tell = jax.random.split(key, 3)
        pop, state = es.ask(k_ask, state, params)
        fit, pstate, _ = prob.eval(k_eval, pop, pstate)
        state, metrics = es.tell(k_tell, pop, fit, state, params)
        return (state, pstate), metrics["best_fitness"]

    (state, _), best = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks))((state, pstate), jax.random.split(key, 16))
    return state, best


@pytest.mark.parametrize("kind", ["bbob_sphere", "gymnax_cartpole"])
def test_dense_population_runs_an_evosax_loop_unchanged_and_equals_the_low_rank_default(kind):
    prob = _problem(kind)
    maximize = kind.startswith("gymnax")  # evosax's gymnax problem returns episode returns
    make = lambda dense: eggroll.eggroll(  # noqa: E731
        population_size=16,
        solution=prob.sample(jax.random.key(0)),
        optimizer=optax.adam(0.05),
        maximize=maximize,
        dense_population=dense,
    )
    with jax.numpy_rank_promotion("allow"):  # evosax's problems rely on implicit rank promotion
        dense_state, dense_fits = _python_loop(make(True), prob, jax.random.key(1))
        ref_state, ref_fits = _python_loop(make(False), prob, jax.random.key(1), materialize_by_hand=True)
        scan_state, best = _scan_loop(make(True), prob, jax.random.key(1))
    assert dense_fits == ref_fits
    # tell reads the stacked members it is given (x - mean) / sigma, as evosax does; ask's fused materialisation
    # and es.materialize may round a member differently in the last bit, so the means agree to float32 rounding.
    for a, b in zip(jax.tree.leaves(dense_state.mean), jax.tree.leaves(ref_state.mean), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(scan_state.mean))
    assert best.shape == (16,)
    if maximize:
        assert max(dense_fits[-4:]) > dense_fits[0]  # returns go up
    else:
        assert min(dense_fits[-4:]) < dense_fits[0]  # the sphere goes down


def test_dense_population_is_stacked_and_tell_accepts_both_forms():
    solution = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    dense = eggroll.eggroll(population_size=8, solution=solution, dense_population=True)
    light = eggroll.eggroll(population_size=8, solution=solution)
    params = dense.default_params
    state = dense.init(jax.random.key(0), solution, params)
    pop_d, state_d = dense.ask(jax.random.key(1), state, params)
    pop_l, state_l = light.ask(jax.random.key(1), state, params)
    assert pop_d["w"].shape == (8, 3, 2) and pop_d["b"].shape == (8, 2)
    for a, b in zip(jax.tree.leaves(pop_d), jax.tree.leaves(light.materialize(pop_l)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fit = jax.vmap(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"]))(pop_d)
    s_d, _ = dense.tell(jax.random.key(2), pop_d, fit, state_d, params)
    s_l, _ = light.tell(jax.random.key(2), pop_l, fit, state_l, params)
    # The stacked members are read, (x - mean) / sigma as in evosax; the low-rank receipt is regenerated from
    # counters: the same update to float32 rounding.
    for a, b in zip(
        jax.tree.leaves((s_d.mean, s_d.opt_state)), jax.tree.leaves((s_l.mean, s_l.opt_state)), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # ... and the low-rank receipt may also be told as the stacked population it stands for
    s_m, _ = light.tell(jax.random.key(2), light.materialize(pop_l), fit, state_l, params)
    for a, b in zip(jax.tree.leaves(s_m.mean), jax.tree.leaves(s_d.mean), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
