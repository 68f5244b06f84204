"""MLP policies: heads, bounds, activations, errors, and the EGGROLL (no-materialisation) path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eggroll
from eggroll.models.mlp import ACTIVATIONS, MLPPolicy, default_head, get_activation
from eggroll.problems.rl.fitness import apply_policy, has_lowrank

OBS = jnp.linspace(-1.0, 1.0, 5)


def _init(policy, obs=OBS):
    return policy.init(jax.random.key(0), obs)


def test_argmax_head_returns_the_index_of_the_largest_logit():
    policy = MLPPolicy(action_dim=3, hidden=(8, 8), head="argmax")
    variables = _init(policy)
    params = variables["params"]
    h = jnp.tanh(OBS @ params["hidden_0"]["kernel"] + params["hidden_0"]["bias"])
    h = jnp.tanh(h @ params["hidden_1"]["kernel"] + params["hidden_1"]["bias"])
    logits = h @ params["out"]["kernel"] + params["out"]["bias"]
    action = policy.apply(variables, OBS)
    assert action.dtype == jnp.int32 and action.shape == ()
    assert int(action) == int(jnp.argmax(logits))
    # a key does not make argmax stochastic
    assert int(policy.apply(variables, OBS, jax.random.key(3))) == int(action)


def test_categorical_head_samples_softmax_frequencies():
    policy = MLPPolicy(action_dim=3, hidden=(), head="categorical")
    variables = {"params": {"out": {"kernel": jnp.zeros((5, 3)), "bias": jnp.log(jnp.array([0.2, 0.3, 0.5]))}}}
    keys = jax.random.split(jax.random.key(1), 4000)
    actions = jax.vmap(lambda k: policy.apply(variables, OBS, k))(keys)
    freq = np.bincount(np.asarray(actions), minlength=3) / 4000
    np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=0.03)
    assert int(policy.apply(variables, OBS)) == 2  # no key: the mode


def test_tanh_head_respects_per_dimension_bounds():
    policy = MLPPolicy(action_dim=2, hidden=(16,), head="tanh", action_low=(-2.0, 0.0), action_high=(2.0, 1.0))
    variables = _init(policy)
    big = jax.vmap(lambda x: policy.apply(variables, x))(100.0 * jax.random.normal(jax.random.key(2), (200, 5)))
    assert big.shape == (200, 2)
    assert bool(jnp.all(big[:, 0] >= -2.0) & jnp.all(big[:, 0] <= 2.0))
    assert bool(jnp.all(big[:, 1] >= 0.0) & jnp.all(big[:, 1] <= 1.0))
    # the mapping is low + (tanh(y) + 1) * (high - low) / 2 of the linear output y
    zero = {"params": jax.tree.map(jnp.zeros_like, variables["params"])}
    np.testing.assert_allclose(policy.apply(zero, OBS), [0.0, 0.5], atol=1e-6)


def test_gaussian_head_is_the_tanh_mean_without_key_and_noisy_within_bounds_with_one():
    kw = dict(action_dim=1, hidden=(8,), action_low=-2.0, action_high=2.0)
    gauss, tanh = MLPPolicy(head="gaussian", init_log_std=-1.0, **kw), MLPPolicy(head="tanh", **kw)
    variables = _init(gauss)
    assert variables["params"]["log_std"].shape == (1,)
    plain = {"params": {k: v for k, v in variables["params"].items() if k != "log_std"}}
    np.testing.assert_allclose(gauss.apply(variables, OBS), tanh.apply(plain, OBS), rtol=1e-6)
    samples = jax.vmap(lambda k: gauss.apply(variables, OBS, k))(jax.random.split(jax.random.key(4), 2000))
    assert bool(jnp.all(jnp.abs(samples) <= 2.0))
    # std = exp(log_std) * (high - low) / 2 = exp(-1) * 2 ~ 0.74 (before clipping, mean near 0)
    assert 0.5 < float(jnp.std(samples)) < 0.9


def test_every_named_activation_is_used():
    outs = {}
    for name in sorted(ACTIVATIONS):
        policy = MLPPolicy(action_dim=2, hidden=(4,), activation=name, head="tanh")
        outs[name] = tuple(np.asarray(policy.apply(_init(policy), OBS)).round(6))
    assert outs["swish"] == outs["silu"]
    assert len(set(outs.values())) == len(ACTIVATIONS) - 1  # all others differ


def test_bad_names_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        get_activation("swishy")
    with pytest.raises(ValueError, match="unknown policy head 'softmax'"):
        _init(MLPPolicy(action_dim=2, head="softmax"))
    assert default_head(True, False) == "argmax" and default_head(False, True) == "gaussian"


@pytest.mark.usefixtures("exact_matmuls")
def test_eggroll_members_match_their_materialised_parameters():
    head = "gaussian"  # Dense kernels (low-rank) plus a vector leaf (log_std, full-rank noise)
    policy = MLPPolicy(action_dim=3, hidden=(16, 16), head=head)
    variables = _init(policy)
    es = eggroll.eggroll(8, variables, rank=2, sigma_init=0.3)
    state = es.init(jax.random.key(6), variables, es.default_params)
    population, _ = es.ask(jax.random.key(5), state, es.default_params)
    dense = es.materialize(population)
    obs = jax.random.normal(jax.random.key(7), (8, 5))
    key = jax.random.key(8) if head == "gaussian" else None

    def low(i, x):
        member = eggroll.member(population, i)
        assert has_lowrank(member)  # the no-materialisation path is the one under test
        return apply_policy(policy, member, x, key)

    got = jax.vmap(low)(population.index, obs)
    want = jax.vmap(lambda p, x: apply_policy(policy, p, x, key))(dense, obs)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-5, atol=1e-5)
    # members really differ from each other
    means = jax.vmap(lambda p: policy.apply(p, obs[0]))(dense)
    assert len({tuple(np.atleast_1d(np.asarray(m)).round(5)) for m in means}) > 1
