"""Brax fitness against a hand-written reference rollout, and a short EGGROLL run that learns.

One small environment (inverted_pendulum, spring backend, 60-step horizon) and
one compiled ``evaluate`` for the whole module: Brax compiles are slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eggroll
from eggroll.problems.rl import brax_env, normalize, rl_fitness

HORIZON = 60
POP = 32


_JIT = {}


def _jitted(fn):
    """``jax.jit(fn)``, once per function, with rank promotion allowed (Brax's code relies on it)."""

    def allowed(*args):
        with jax.numpy_rank_promotion("allow"):
            return fn(*args)

    return _JIT.setdefault(fn, jax.jit(allowed))


@pytest.fixture(scope="module")
def setup():
    env = brax_env("inverted_pendulum", episode_length=HORIZON, backend="spring")
    fit = rl_fitness(env, hidden=(16,), num_rollouts=2, horizon=HORIZON)
    params = fit.init_params(jax.random.key(0))
    es = eggroll.eggroll(POP, params, sigma_init=0.1, maximize=True, optimizer=optax.adam(0.03))
    return env, fit, es, params, jax.jit(fit.evaluate_rollouts)


def _reference_returns(env, fit, member_params, key, stats, num_rollouts):
    """A plain Python loop over Brax's env.reset / env.step for one member (common random numbers)."""
    brax = env.raw
    step, reset = _jitted(brax.step), _jitted(brax.reset)
    apply = _jitted(fit.policy.apply)
    mean, var = np.asarray(stats.mean), np.asarray(normalize.variance(stats))
    returns, seen = [], []
    for k in jax.random.split(key, num_rollouts):
        state = reset(jax.random.fold_in(k, 0))
        total = 0.0
        for _ in range(HORIZON):
            seen.append(np.asarray(state.obs))
            x = np.clip((np.asarray(state.obs) - mean) / np.sqrt(var + 1e-8), -10.0, 10.0)
            state = step(state, apply(member_params, jnp.asarray(x, jnp.float32)))
            total += float(state.reward)
            if float(state.done) > 0.5:
                break
        returns.append(total)
    return np.array(returns), np.stack(seen)


@pytest.mark.slow
def test_brax_fitness_equals_reference_rollout_of_the_same_policy(setup):
    env, fit, es, params, evaluate = setup
    state = es.init(jax.random.key(1), params, es.default_params)
    population, _ = es.ask(jax.random.key(2), state, es.default_params)
    dense = es.materialize(population)
    fstate = fit.init(jax.random.key(3))
    key1, key2 = jax.random.key(4), jax.random.key(5)
    roll1, fstate1 = evaluate(key1, population, fstate)  # builds non-trivial observation statistics
    roll2, _ = evaluate(key2, population, fstate1)
    assert float(fstate1.obs_stats.count) == float(jnp.sum(roll1.lengths))
    for i in (0, POP - 1):
        member = jax.tree.map(lambda x, i=i: x[i], dense)
        want, _ = _reference_returns(env, fit, member, key2, fstate1.obs_stats, 2)
        np.testing.assert_allclose(roll2.returns[i], want, rtol=1e-4, atol=1e-3)
        assert roll2.lengths[i].min() >= 1
    assert float(jnp.min(roll2.lengths)) < HORIZON, "some episode must terminate early (masking exercised)"


@pytest.mark.slow
def test_short_eggroll_run_raises_the_return(setup):
    _, fit, es, params, evaluate = setup
    p = es.default_params
    state = es.init(jax.random.key(10), params, p)
    fstate = fit.init(jax.random.key(11))
    ask, tell = es.ask, es.tell
    means = []
    for g in range(14):
        key = jax.random.fold_in(jax.random.key(12), g)
        population, state = ask(key, state, p)
        rollouts, fstate = evaluate(jax.random.fold_in(key, 1), population, fstate)
        fitness = jnp.mean(rollouts.returns, axis=-1)
        state, _ = tell(key, population, fitness, state, p)
        means.append(float(jnp.mean(fitness)))
    assert max(means[-3:]) > means[0] + 10.0, means
