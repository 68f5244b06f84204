"""The checks every strategy must pass: jit, scan, vmap over params, stability, convergence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from evosax.algorithms import Open_ES

import eggroll

FACTORIES = {"open_es": eggroll.open_es, "eggroll": eggroll.eggroll}


def sphere(x):
    return jnp.sum(x**2)


def matrix_sphere(p):
    return jnp.sum(eggroll.lowrank.materialize(p["w"]) ** 2) + jnp.sum(p["b"] ** 2)


def run(es, mean, fitness_fn, generations, params=None, seed=0):
    params = es.default_params if params is None else params
    state = es.init(jax.random.key(seed), mean, params)

    def step(state, key):
        k_ask, k_tell = jax.random.split(key)
        pop, state = es.ask(k_ask, state, params)
        fit = eggroll.evaluate(fitness_fn, pop)
        state, metrics = es.tell(k_tell, pop, fit, state, params)
        return state, metrics["mean_fitness"]

    keys = jax.random.split(jax.random.key(seed + 1), generations)
    return jax.jit(lambda s: jax.lax.scan(step, s, keys))(state)


@pytest.mark.parametrize("name", FACTORIES)
def test_default_settings_converge_on_10d_sphere(name):
    """The issue's bar: 10-D sphere from 3.0, population 32, 500 generations, f < 1e-3."""
    es = FACTORIES[name](population_size=32, solution=jnp.zeros(10))
    state, curve = run(es, jnp.full(10, 3.0), sphere, 500)
    assert float(sphere(es.get_mean(state))) < 1e-3
    assert float(curve[-1]) < float(curve[0]) / 100


@pytest.mark.parametrize("name", FACTORIES)
def test_converges_on_matrix_sphere(name):
    """Matrix leaves (low-rank noise for EGGROLL, rank 1) converge too."""
    sol = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}
    mean = jax.tree.map(lambda x: x + 2.0, sol)
    es = FACTORIES[name](population_size=64, solution=sol)
    state, _ = run(es, mean, matrix_sphere, 600)
    assert float(matrix_sphere(es.get_mean(state))) < 1e-2


@pytest.mark.parametrize("name", FACTORIES)
def test_same_key_same_run_bit_for_bit(name):
    sol = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    es = FACTORIES[name](population_size=8, solution=sol)
    mean = jax.tree.map(lambda x: x + 1.0, sol)
    s1, c1 = run(es, mean, matrix_sphere, 20, seed=3)
    s2, c2 = run(es, mean, matrix_sphere, 20, seed=3)
    s3, _ = run(es, mean, matrix_sphere, 20, seed=4)
    for a, b in zip(jax.tree.leaves(s1.mean), jax.tree.leaves(s2.mean), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(c1), np.asarray(c2))
    assert not np.array_equal(np.asarray(s1.mean["w"]), np.asarray(s3.mean["w"]))


@pytest.mark.parametrize("name", FACTORIES)
def test_state_shape_and_dtype_stable_and_no_retrace(name):
    sol = {"w": jnp.zeros((4, 3), jnp.bfloat16), "b": jnp.zeros(3, jnp.float32), "n": jnp.zeros((), jnp.int32)}
    es = FACTORIES[name](population_size=8, solution=sol)
    p = es.default_params
    state = es.init(jax.random.key(0), sol, p)
    traces = []

    @jax.jit
    def gen(state, key):
        traces.append(1)
        pop, state = es.ask(key, state, p)
        fit = eggroll.evaluate(lambda m: jnp.sum(eggroll.lowrank.materialize(m["w"]).astype(jnp.float32)), pop)
        return es.tell(key, pop, fit, state, p)[0]

    before = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for g in range(3):
        state = gen(state, jax.random.key(g))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == before
    assert len(traces) == 1
    assert state.mean["w"].dtype == jnp.bfloat16 and state.mean["n"].dtype == jnp.int32
    assert int(state.generation_counter) == 3
    # the int leaf is frozen: never perturbed, never updated
    assert int(state.mean["n"]) == 0


@pytest.mark.parametrize("name", FACTORIES)
def test_vmap_over_params_sweeps_sigma_in_one_call(name):
    es = FACTORIES[name](population_size=16, solution=jnp.zeros(5))
    sigmas = jnp.array([0.01, 0.1, 1.0])
    params = jax.vmap(lambda s: es.default_params.replace(sigma_init=s))(sigmas)
    states, curves = jax.vmap(lambda p: run(es, jnp.full(5, 2.0), sphere, 50, params=p))(params)
    assert curves.shape == (3, 50)
    np.testing.assert_allclose(np.asarray(states.sigma), np.asarray(sigmas))
    # different sigmas give different runs
    assert len({float(c) for c in curves[:, -1]}) == 3


@pytest.mark.parametrize("name", FACTORIES)
def test_evosax_loop_runs_unchanged(name):
    """A loop written for evosax 0.3 (fitness over a stacked population) runs with eggroll strategies."""

    def evosax_loop(es, mean, key, generations=100):
        params = es.default_params
        key, sub = jax.random.split(key)
        state = es.init(sub, mean, params)
        for _ in range(generations):
            key, k_ask, k_tell = jax.random.split(key, 3)
            population, state = es.ask(k_ask, state, params)
            fitness = jax.vmap(sphere)(population)
            state, metrics = es.tell(k_tell, population, fitness, state, params)
        return metrics

    with jax.numpy_rank_promotion("allow"):  # evosax itself relies on implicit rank promotion
        ref = evosax_loop(
            Open_ES(population_size=16, solution=jnp.zeros(4), optimizer=optax.adam(0.05)),
            jnp.full(4, 2.0),
            jax.random.key(0),
        )
    dense = {"dense_population": True} if name == "eggroll" else {}  # stacked members, as evosax's fitness expects
    es = FACTORIES[name](population_size=16, solution=jnp.zeros(4), optimizer=optax.adam(0.05), **dense)
    metrics = evosax_loop(es, jnp.full(4, 2.0), jax.random.key(0))
    for key in ("best_fitness", "best_solution", "best_fitness_in_generation", "generation_counter"):
        assert key in metrics and key in ref
    assert float(metrics["best_fitness"]) < 1.0 and float(ref["best_fitness"]) < 16.0
    assert float(sphere(metrics["best_solution"])) == pytest.approx(float(metrics["best_fitness"]), rel=1e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_maximize_reports_user_sign(name):
    es = FACTORIES[name](population_size=16, solution=jnp.zeros(3), maximize=True)
    state, curve = run(es, jnp.full(3, 2.0), lambda x: -sphere(x), 200)
    assert float(curve[-1]) > float(curve[0])  # rewards went up
    assert float(state.best_fitness) > -12.0 and float(state.best_fitness) <= 0.0


def test_sigma_schedule_and_weight_decay():
    es = eggroll.open_es(population_size=8, solution=jnp.zeros(3))
    p = es.default_params.replace(sigma_init=0.5, sigma_decay=0.5, sigma_limit=0.1, weight_decay=0.0)
    state, _ = run(es, jnp.ones(3), lambda x: 0.0 * jnp.sum(x), 4, params=p)
    assert float(state.sigma) == pytest.approx(0.1)  # 0.5 -> 0.25 -> 0.125 -> 0.1 (limit)
    # with a constant fitness only weight decay moves the mean: towards zero
    p = es.default_params.replace(weight_decay=1.0)
    state, _ = run(es, jnp.ones(3), lambda x: 0.0 * jnp.sum(x), 20, params=p)
    assert np.all(np.asarray(state.mean) < 1.0)
    state0, _ = run(es, jnp.ones(3), lambda x: 0.0 * jnp.sum(x), 20)
    np.testing.assert_array_equal(np.asarray(state0.mean), np.ones(3))


def test_trainable_mask_freezes_leaves():
    sol = {"w": jnp.zeros((3, 3)), "frozen": jnp.ones((3, 3))}
    es = eggroll.eggroll(population_size=8, solution=sol, trainable={"w": True, "frozen": False})
    state, _ = run(es, sol, lambda m: jnp.sum(eggroll.lowrank.materialize(m["w"]) - 1.0) ** 2, 10)
    np.testing.assert_array_equal(np.asarray(state.mean["frozen"]), np.ones((3, 3)))
    assert not np.allclose(np.asarray(state.mean["w"]), 0.0)


def test_track_best_off_keeps_no_copy_and_same_mean():
    sol = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    mean = jax.tree.map(lambda x: x + 1.0, sol)
    on = eggroll.eggroll(population_size=8, solution=sol)
    off = eggroll.eggroll(population_size=8, solution=sol, track_best=False)
    s_on, _ = run(on, mean, matrix_sphere, 10)
    s_off, _ = run(off, mean, matrix_sphere, 10)
    assert s_off.best_solution is None and s_on.best_solution is not None
    np.testing.assert_array_equal(np.asarray(s_on.mean["w"]), np.asarray(s_off.mean["w"]))
    assert float(s_off.best_fitness) == float(s_on.best_fitness)
