"""Counter-based noise: distribution, independence, determinism, leaf classification."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import eggroll
from eggroll import noise as nz


def test_hash_normal_is_standard_gaussian():
    z = np.asarray(nz.hash_normal(nz.hash_seeds(jax.random.key(0), 7, 0, 3), 400_000), np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(stats.kurtosis(z, fisher=False) - 3.0) < 0.06 and abs(stats.skew(z)) < 0.03
    assert stats.kstest(z[:100_000], "norm").pvalue > 1e-3
    # the tails exist (Box-Muller reaches beyond 4 sigma with 4e5 draws)
    assert np.abs(z).max() > 4.0


def test_streams_are_independent_across_counters():
    key = jax.random.key(1)
    draws = {
        "base": nz.hash_normal(nz.hash_seeds(key, 1, 0, 0), 50_000),
        "other_pair": nz.hash_normal(nz.hash_seeds(key, 1, 0, 1), 50_000),
        "other_leaf": nz.hash_normal(nz.hash_seeds(key, 2, 0, 0), 50_000),
        "other_generation": nz.hash_normal(nz.hash_seeds(key, 1, 1, 0), 50_000),
        "other_key": nz.hash_normal(nz.hash_seeds(jax.random.key(2), 1, 0, 0), 50_000),
    }
    base = np.asarray(draws.pop("base"))
    for name, d in draws.items():
        r = np.corrcoef(base, np.asarray(d))[0, 1]
        assert abs(r) < 0.02, (name, r)
    # neighbouring elements of one stream are uncorrelated too
    assert abs(np.corrcoef(base[:-1], base[1:])[0, 1]) < 0.02


def test_same_counters_same_noise():
    a = nz.hash_normal(nz.hash_seeds(jax.random.key(3), 5, 2, 9), 1000)
    b = nz.hash_normal(nz.hash_seeds(jax.random.key(3), 5, 2, 9), 1000)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_many_members_have_uncorrelated_noise():
    """No two of 512 members share (shifted or permuted) noise windows."""
    key = jax.random.key(0)
    z = jax.vmap(lambda p: nz.hash_normal(nz.hash_seeds(key, 11, 0, p), 256))(jnp.arange(512))
    c = np.corrcoef(np.asarray(z))
    np.fill_diagonal(c, 0)
    assert np.abs(c).max() < 0.35  # 256 samples: |r| > 0.35 has p < 1e-8 per pair


@pytest.mark.parametrize("noise", ["hash", "threefry"])
def test_both_generators_drive_a_strategy(noise):
    es = eggroll.eggroll(population_size=16, solution=jnp.zeros((3, 4)), noise=noise)
    state = es.init(jax.random.key(0), jnp.ones((3, 4)), es.default_params)
    for g in range(100):
        pop, state = es.ask(jax.random.key(g), state, es.default_params)
        fit = eggroll.evaluate(lambda m: jnp.sum(eggroll.lowrank.materialize(m) ** 2), pop)
        state, _ = es.tell(jax.random.key(g), pop, fit, state, es.default_params)
    assert float(jnp.sum(state.mean**2)) < 6.0  # from 12.0


def test_leaf_classification():
    sol = {
        "kernel": jnp.zeros((3, 4)),
        "bias": jnp.zeros((2, 4)),  # a 2-D DenseGeneral bias: full rank by name
        "vec": jnp.zeros(4),
        "ids": jnp.zeros(3, jnp.int32),
    }
    kinds = {jax.tree_util.keystr(s.path): s.kind for s in nz.leaf_specs(sol)}
    assert kinds == {"['bias']": "full", "['ids']": "frozen", "['kernel']": "lowrank", "['vec']": "full"}
    kinds = {jax.tree_util.keystr(s.path): s.kind for s in nz.leaf_specs(sol, trainable=lambda p, x: x.ndim == 1)}
    assert kinds["['kernel']"] == "frozen" and kinds["['vec']"] == "full"
    with pytest.raises(ValueError, match="leaves"):
        nz.leaf_specs(sol, trainable={"kernel": True})
