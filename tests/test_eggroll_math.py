"""Exact-value tests of the maths behind EGGROLL and OpenAI-ES."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import eggroll
from eggroll import lowrank as lr


def one_generation(es, mean, fitness_fn, key=0, params=None):
    params = es.default_params if params is None else params
    state = es.init(jax.random.key(key), mean, params)
    pop, state = es.ask(jax.random.key(1), state, params)
    fit = eggroll.evaluate(fitness_fn, pop)
    new_state, metrics = es.tell(jax.random.key(2), pop, fit, state, params)
    return state, pop, fit, new_state, metrics


# --------------------------------------------------------------------------- low-rank forward


def test_lowrank_ops_equal_materialised():
    k = jax.random.split(jax.random.key(0), 5)
    w = lr.LowRank(jax.random.normal(k[0], (7, 5)), jax.random.normal(k[1], (7, 3)), jax.random.normal(k[2], (5, 3)))
    dense = lr.materialize(w)
    np.testing.assert_allclose(dense, w.base + w.a @ w.b.T, rtol=1e-6)
    x = jax.random.normal(k[3], (4, 7))
    np.testing.assert_allclose(lr.matmul(x, w), x @ dense, rtol=1e-5, atol=1e-5)
    ids = jnp.array([0, 6, 3, 3])
    np.testing.assert_allclose(lr.embed(ids, w), dense[ids], rtol=1e-5, atol=1e-5)
    q = jax.random.normal(k[4], (2, 5))
    np.testing.assert_allclose(lr.attend(q, w), q @ dense.T, rtol=1e-5, atol=1e-5)
    # plain arrays pass straight through
    np.testing.assert_array_equal(lr.matmul(x, dense), x @ dense)


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, ids):
        emb = nn.Embed(40, 8)
        h = emb(ids)
        h = nn.tanh(nn.Dense(16)(h))
        h = nn.DenseGeneral((2, 4))(h)
        h = nn.DenseGeneral(8, axis=(-2, -1))(h)
        return emb.attend(h)


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.emb = nnx.Embed(40, 8, rngs=rngs)
        self.lin = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, ids):
        return self.emb.attend(nnx.relu(self.lin(self.emb(ids))))


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.usefixtures("exact_matmuls")
def test_linen_lowrank_forward_equals_materialised(rank):
    model, ids = LinenModel(), jnp.array([1, 2, 39])
    variables = model.init(jax.random.key(0), ids)
    es = eggroll.eggroll(population_size=6, solution=variables, rank=rank, sigma_init=0.3)
    state = es.init(jax.random.key(0), variables, es.default_params)
    pop, _ = es.ask(jax.random.key(1), state, es.default_params)
    low = eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, ids), pop)
    dense = jax.vmap(lambda v: model.apply(v, ids))(es.materialize(pop))
    np.testing.assert_allclose(low, dense, rtol=1e-5, atol=1e-5)
    # members really differ from the mean (the perturbation is not lost)
    base = model.apply(variables, ids)
    assert float(jnp.abs(dense - base[None]).min(axis=(1, 2)).max()) > 0 or float(jnp.abs(dense - base).max()) > 1e-2


@pytest.mark.usefixtures("exact_matmuls")
def test_nnx_lowrank_forward_equals_materialised():
    graphdef, state0 = nnx.split(NNXModel(nnx.Rngs(0)))
    ids = jnp.array([3, 4, 5])
    es = eggroll.eggroll(population_size=4, solution=state0, rank=2, sigma_init=0.3)
    state = es.init(jax.random.key(0), state0, es.default_params)
    pop, _ = es.ask(jax.random.key(1), state, es.default_params)
    low = eggroll.evaluate(lambda m: eggroll.apply_nnx(graphdef, m, ids), pop)
    dense = jax.vmap(lambda s: nnx.merge(graphdef, s)(ids))(es.materialize(pop))
    np.testing.assert_allclose(low, dense, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(dense[0] - dense[2]).max()) > 1e-2


@pytest.mark.usefixtures("exact_matmuls")
def test_a_layer_stack_under_nn_scan_is_refused_clearly_and_lowrank_false_runs_it():
    """Scanned layers see one slice of a stacked kernel; apply_flax failed inside dot_general with XLA's words."""

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return jnp.tanh(nn.Dense(4)(h)), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            layers = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return layers()(x, None)[0]

    model, x = Stack(), jnp.ones((2, 4))
    variables = model.init(jax.random.key(0), x)

    def population(**kw):
        es = eggroll.eggroll(population_size=4, solution=variables, sigma_init=0.3, **kw)
        state = es.init(jax.random.key(0), variables, es.default_params)
        return es, es.ask(jax.random.key(1), state, es.default_params)[0]

    es, pop = population()
    with pytest.raises(ValueError, match=r"Dense_0/kernel: the layer uses a \(4, 4\) slice of a stacked \(3, 4, 4\)"):
        eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x), pop)
    es, pop = population(lowrank=lambda path, leaf: False)  # the way out the message gives
    low = eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x), pop)
    np.testing.assert_allclose(low, jax.vmap(lambda v: model.apply(v, x))(es.materialize(pop)), rtol=1e-5, atol=1e-5)


def test_unconsumed_lowrank_leaf_is_an_error():
    class Conv(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(2, (3,))(x).sum()

    model, x = Conv(), jnp.ones((5, 1))
    variables = model.init(jax.random.key(0), x)
    es = eggroll.eggroll(population_size=2, solution=variables)
    state = es.init(jax.random.key(0), variables, es.default_params)
    pop, _ = es.ask(jax.random.key(1), state, es.default_params)
    with pytest.raises(ValueError, match="not consumed"):
        eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x), pop)
    # the documented way out: full-rank noise for that leaf
    es = eggroll.eggroll(population_size=2, solution=variables, lowrank=lambda path, leaf: False)
    state = es.init(jax.random.key(0), variables, es.default_params)
    pop, _ = es.ask(jax.random.key(1), state, es.default_params)
    assert eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x), pop).shape == (2,)


def test_population_never_materialises_member_matrices():
    """No intermediate of the evaluation has N*m*n elements (jaxpr inspection)."""
    n, m, k = 64, 256, 128
    sol = {"w": jnp.zeros((m, k))}
    es = eggroll.eggroll(population_size=n, solution=sol)
    state = es.init(jax.random.key(0), sol, es.default_params)
    x = jnp.ones((m,))

    def gen(state):
        pop, state = es.ask(jax.random.key(1), state, es.default_params)
        fit = eggroll.evaluate(lambda p: jnp.sum(lr.matmul(x, p["w"]) ** 2), pop)
        return es.tell(jax.random.key(2), pop, fit, state, es.default_params)[0]

    def sizes(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                yield math.prod(getattr(v.aval, "shape", ()))
            for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
                yield from sizes(sub)
            for p in eqn.params.values():
                if hasattr(p, "jaxpr"):
                    yield from sizes(p.jaxpr)

    biggest = max(sizes(jax.make_jaxpr(gen)(state).jaxpr))
    assert biggest < n * m * k // 8, biggest
    assert biggest >= m * k  # the update itself is m x k


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("factory", [eggroll.open_es, eggroll.eggroll])
def test_antithetic_members_are_exact_mirrors(factory):
    sol = {"w": jnp.zeros((5, 4)), "b": jnp.zeros(4)}
    es = factory(population_size=8, solution=sol, sigma_init=0.25)
    state = es.init(jax.random.key(0), sol, es.default_params)
    pop, _ = es.ask(jax.random.key(1), state, es.default_params)
    dense = es.materialize(pop)
    for leaf in jax.tree.leaves(dense):
        np.testing.assert_array_equal(np.asarray(leaf[0::2]), -np.asarray(leaf[1::2]))
        assert not np.allclose(np.asarray(leaf[0]), np.asarray(leaf[2]))


def test_noise_reuse_keeps_perturbations_for_k_generations():
    sol = {"w": jnp.zeros((3, 3))}
    es = eggroll.eggroll(population_size=4, solution=sol, noise_reuse=3, optimizer=optax.sgd(0.0))
    p = es.default_params
    state = es.init(jax.random.key(0), sol, p)
    offsets = []
    for g in range(4):
        pop, state = es.ask(jax.random.key(g), state, p)
        offsets.append(np.asarray(es.materialize(pop)["w"]))
        state, _ = es.tell(jax.random.key(g), pop, jnp.arange(4.0), state, p)
    np.testing.assert_array_equal(offsets[0], offsets[1])
    np.testing.assert_array_equal(offsets[0], offsets[2])
    assert not np.allclose(offsets[0], offsets[3])


# --------------------------------------------------------------------------- the update


@pytest.mark.parametrize("antithetic", [True, False])
def test_update_equals_explicit_sum_over_members(antithetic):
    """mean' = mean - lr * (1/(N sigma)) sum_i f_i E_i with E_i = (member_i - mean)/sigma, formed explicitly."""
    sol = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    mean = {"w": jnp.arange(12.0).reshape(4, 3) / 10, "b": jnp.ones(3)}
    sigma, n, lrate = 0.1, 6, 0.5
    es = eggroll.eggroll(
        population_size=n,
        solution=sol,
        rank=2,
        sigma_init=sigma,
        optimizer=optax.sgd(lrate),
        fitness_shaping="identity",
        antithetic=antithetic,
    )
    fitness_fn = lambda m: jnp.sum(lr.materialize(m["w"]) ** 3) + jnp.sum(jnp.sin(m["b"]))
    state, pop, fit, new_state, _ = one_generation(es, mean, fitness_fn)
    dense = es.materialize(pop)
    for name in ("w", "b"):
        eps = (np.asarray(dense[name], np.float64) - np.asarray(mean[name], np.float64)[None]) / sigma
        grad = np.tensordot(np.asarray(fit, np.float64), eps, axes=1) / (n * sigma)
        np.testing.assert_allclose(np.asarray(new_state.mean[name]), np.asarray(mean[name]) - lrate * grad, rtol=2e-4)
    # the low-rank members are rank 2 perturbations of the mean
    e0 = np.asarray(dense["w"][0] - mean["w"])
    assert np.linalg.matrix_rank(e0, tol=1e-5) == 2


@pytest.mark.parametrize("rank", [1, 2])
def test_estimator_is_unbiased_for_linear_fitness(rank):
    """E[g] = C for f(W) = <C, W> (identity shaping): a Monte Carlo z-test that a bias would fail."""
    c = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    sol = {"w": jnp.zeros((2, 3))}
    es = eggroll.eggroll(
        population_size=64, solution=sol, rank=rank, optimizer=optax.sgd(1.0), fitness_shaping="identity"
    )

    def grad_estimate(seed):
        _, _, _, new_state, _ = one_generation(es, sol, lambda m: jnp.sum(c * lr.materialize(m["w"])), key=seed)
        return -new_state.mean["w"]  # sgd(1.0): mean' = mean - g

    g = np.asarray(jax.jit(jax.vmap(grad_estimate))(jnp.arange(400)), np.float64)
    se = g.std(axis=0) / math.sqrt(g.shape[0])
    z = (g.mean(axis=0) - np.asarray(c)) / se
    assert np.all(np.abs(z) < 5), z
    # and the test has power: a 20% scale error would be detected
    assert np.any(np.abs((g.mean(axis=0) - 0.8 * np.asarray(c)) / se) > 5)


# --------------------------------------------------------------------------- bad input


def test_nan_and_inf_fitness_rank_worst_and_never_reach_params():
    sol = jnp.zeros(4)
    es = eggroll.open_es(population_size=8, solution=sol)
    p = es.default_params
    state = es.init(jax.random.key(0), jnp.ones(4), p)
    pop, state = es.ask(jax.random.key(1), state, p)
    fit = jax.vmap(lambda x: jnp.sum(x**2))(pop)
    bad = fit.at[0].set(jnp.nan).at[3].set(jnp.inf).at[5].set(-jnp.inf)
    worst = fit.at[0].set(fit.max()).at[3].set(fit.max()).at[5].set(fit.max())
    s_bad, m_bad = es.tell(jax.random.key(2), pop, bad, state, p)
    s_ref, _ = es.tell(jax.random.key(2), pop, worst, state, p)
    assert np.all(np.isfinite(np.asarray(s_bad.mean)))
    np.testing.assert_allclose(np.asarray(s_bad.mean), np.asarray(s_ref.mean), rtol=1e-6)
    assert int(m_bad["num_nonfinite"]) == 3
    # all non-finite: the mean does not move
    s_all, m_all = es.tell(jax.random.key(2), pop, jnp.full(8, jnp.nan), state, p)
    np.testing.assert_array_equal(np.asarray(s_all.mean), np.asarray(state.mean))
    # ... and its statistics say so: NaN, not a perfect-looking 0.0
    assert np.isnan(float(m_all["mean_fitness"])) and np.isnan(float(m_all["std_fitness"]))
    assert int(m_all["num_nonfinite"]) == 8


def test_clear_errors_for_bad_input():
    with pytest.raises(ValueError, match="odd"):
        eggroll.eggroll(population_size=7, solution=jnp.zeros(3))
    with pytest.raises(ValueError, match="odd"):
        eggroll.open_es(population_size=7, solution=jnp.zeros(3))
    eggroll.open_es(population_size=7, solution=jnp.zeros(3), antithetic=False)  # fine without pairs
    with pytest.raises(ValueError, match="no leaves"):
        eggroll.eggroll(population_size=4, solution={})
    with pytest.raises(ValueError, match="No leaf .* can evolve"):
        eggroll.open_es(population_size=4, solution={"n": jnp.zeros(3, jnp.int32)})
    with pytest.raises(ValueError, match="noise_reuse"):
        eggroll.eggroll(population_size=4, solution=jnp.zeros(3), noise_reuse=0)
    es = eggroll.eggroll(population_size=4, solution=jnp.zeros(3))
    state = es.init(jax.random.key(0), jnp.zeros(3), es.default_params)
    pop, state = es.ask(jax.random.key(0), state, es.default_params)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        es.tell(jax.random.key(0), pop, jnp.zeros((4, 2)), state, es.default_params)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        es.tell(jax.random.key(0), pop, jnp.zeros(5), state, es.default_params)
    with pytest.raises(ValueError, match="structure"):
        es.init(jax.random.key(0), {"x": jnp.zeros(3)}, es.default_params)
    with pytest.raises(ValueError, match="shape"):
        es.init(jax.random.key(0), jnp.zeros(4), es.default_params)


# --------------------------------------------------------------------------- shaping


def test_shaping_functions():
    f = jnp.array([3.0, 1.0, 2.0, 10.0])
    np.testing.assert_allclose(eggroll.shaping.centered_rank(f), [1 / 6, -0.5, -1 / 6, 0.5], rtol=1e-6)
    z = eggroll.shaping.z_score(f)
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1) < 1e-4
    g = eggroll.shaping.group_z_score(jnp.array([1.0, 3.0, 10.0, 14.0]), 2)
    np.testing.assert_allclose(g[:2], g[2:] / 2, rtol=1e-6)  # centred per group, one global scale
    np.testing.assert_allclose(eggroll.shaping.sanitize(jnp.array([1.0, jnp.nan, 2.0])), [1.0, 2.0, 2.0])
    # ties share their rank: a flat landscape gives zero weights
    np.testing.assert_array_equal(eggroll.shaping.centered_rank(jnp.ones(6)), np.zeros(6))
    np.testing.assert_allclose(
        eggroll.shaping.centered_rank(jnp.array([1.0, 5.0, 5.0, 0.0])), [-1 / 6, 1 / 3, 1 / 3, -0.5], rtol=1e-6
    )


@pytest.mark.parametrize("build", [eggroll.eggroll, eggroll.open_es])
def test_group_size_shaping_is_used(build):
    es = build(population_size=8, solution=jnp.zeros(3), group_size=4, optimizer=optax.sgd(1.0))
    p = es.default_params
    state = es.init(jax.random.key(0), jnp.zeros(3), p)
    pop, state = es.ask(jax.random.key(1), state, p)
    base = jnp.arange(8.0) % 4
    s1, _ = es.tell(jax.random.key(2), pop, base, state, p)
    s2, _ = es.tell(jax.random.key(2), pop, base + jnp.repeat(jnp.array([0.0, 100.0]), 4), state, p)
    # adding a per-group constant (the input's difficulty) changes nothing
    np.testing.assert_allclose(np.asarray(s1.mean), np.asarray(s2.mean), rtol=1e-5, atol=1e-7)
    # without groups the same constant does change the update
    plain = build(population_size=8, solution=jnp.zeros(3), fitness_shaping="z_score", optimizer=optax.sgd(1.0))
    t1, _ = plain.tell(jax.random.key(2), pop, base, state, p)
    t2, _ = plain.tell(jax.random.key(2), pop, base + jnp.repeat(jnp.array([0.0, 100.0]), 4), state, p)
    assert not np.allclose(np.asarray(t1.mean), np.asarray(t2.mean), rtol=1e-3)


@pytest.mark.parametrize("build", [eggroll.eggroll, eggroll.open_es])
def test_an_explicit_centered_rank_with_group_size_is_refused_not_switched(build):
    # group_size's default shaping is z-score; asking for centered ranks as well used to switch to z-score silently
    with pytest.raises(ValueError, match="group_size=4 uses group-wise z-scores.*got 'centered_rank'"):
        build(population_size=8, solution=jnp.zeros(3), group_size=4, fitness_shaping="centered_rank")


# --------------------------------------------------------------------------- an MLP learns


def test_flax_mlp_fits_regression_with_eggroll():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.tanh(nn.Dense(32)(x))
            x = nn.tanh(nn.Dense(32)(x))
            return nn.Dense(1)(x)

    x = jnp.linspace(-2, 2, 64)[:, None]
    y = jnp.sin(2 * x)
    model = MLP()
    variables = model.init(jax.random.key(0), x)
    loss = lambda v: jnp.mean((eggroll.apply_flax(model, v, x) - y) ** 2)
    es = eggroll.eggroll(population_size=256, solution=variables, rank=1, optimizer=optax.adam(0.03))
    p = es.default_params
    state = es.init(jax.random.key(0), variables, p)

    def step(state, key):
        pop, state = es.ask(key, state, p)
        state, metrics = es.tell(key, pop, eggroll.evaluate(loss, pop), state, p)
        return state, metrics["mean_fitness"]

    start = float(loss(variables))
    state, curve = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(jax.random.key(1), 300)))(state)
    end = float(loss(es.get_mean(state)))
    assert end < 0.1 * start, (start, end)
    assert end < 0.05
