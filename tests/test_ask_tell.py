"""The ask / tell contract (docs/concepts.md) and the input checks of the strategy factories.

What is checked: the key given to ``ask`` selects the noise (different keys give
different members, the same key the same members, for both strategies, both
noise generators and integer EGGROLL), and ``tell`` forms its update from that
noise; ``noise_reuse`` keeps one draw for a whole period; ``tell`` reads a
stacked population as evosax does (a clipped member is honoured, equal to
evosax's own ``tell``), takes the key of a low-rank one, refuses a population of
the wrong shape, and the sharded ``tell`` regenerates instead of reading; and
each silent misbehaviour of issue 14 now raises or behaves as documented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eggroll
from eggroll import parallel
from eggroll.strategies import int_eggroll as ie

SOL = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
FACTORIES = {"eggroll": eggroll.eggroll, "open_es": eggroll.open_es}


def _dense(es, pop):
    return [np.asarray(x) for x in jax.tree.leaves(es.materialize(pop))]


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- item 1: the key selects the noise


@pytest.mark.parametrize("noise", ["hash", "threefry"])
@pytest.mark.parametrize("name", FACTORIES)
def test_ask_key_selects_the_noise_and_tell_uses_that_noise(name, noise):
    es = FACTORIES[name](population_size=8, solution=SOL, noise=noise, optimizer=optax.sgd(0.1))
    p = es.default_params
    state = es.init(jax.random.key(0), SOL, p)
    pop1, s1 = es.ask(jax.random.key(1), state, p)
    pop2, s2 = es.ask(jax.random.key(2), state, p)
    pop1b, s1b = es.ask(jax.random.key(1), state, p)
    d1, d2 = _dense(es, pop1), _dense(es, pop2)
    assert not any(np.allclose(x, y) for x, y in zip(d1, d2, strict=True))  # every leaf differs
    assert _equal(d1, _dense(es, pop1b))  # the same key, the same members, bit for bit
    np.testing.assert_array_equal(jax.random.key_data(s1.key), jax.random.key_data(s1b.key))
    # vmap over keys: every population is different (no duplicated members across the batch)
    pops, _ = jax.vmap(es.ask, in_axes=(0, None, None))(jax.random.split(jax.random.key(3), 4), state, p)
    firsts = np.asarray(jax.vmap(es.materialize)(pops)["b"][:, 0])
    assert len({tuple(r) for r in firsts.round(6)}) == 4
    # tell regenerates the noise of the key ask was given: the update equals the one read from the
    # population's own members ((x - mean) / sigma), and differs from the other key's
    fit = jnp.arange(8.0)
    from_noise, _ = es.tell(jax.random.key(9), None, fit, s2, p)
    from_members, _ = es.tell(jax.random.key(9), es.materialize(pop2), fit, s2, p)
    other, _ = es.tell(jax.random.key(9), None, fit, s1, p)
    for a, b, c in zip(*(jax.tree.leaves(s.mean) for s in (from_noise, from_members, other)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("name", FACTORIES)
def test_a_constant_ask_key_still_draws_new_noise_each_generation_and_depends_on_init(name):
    """ask folds its key into the state's noise key, so a loop that reuses one key is not stuck on one draw."""
    es = FACTORIES[name](population_size=4, solution=SOL, optimizer=optax.sgd(0.0))
    p = es.default_params
    draws = {}
    for seed in (0, 1):
        state = es.init(jax.random.key(seed), SOL, p)
        for g in range(2):
            pop, state = es.ask(jax.random.key(7), state, p)
            draws[seed, g] = _dense(es, pop)
            state, _ = es.tell(jax.random.key(7), pop, jnp.arange(4.0), state, p)
    assert not _equal(draws[0, 0], draws[0, 1])
    assert not _equal(draws[0, 0], draws[1, 0])
    # ask(None, ...) folds nothing in: the state's key and the counters alone
    state = es.init(jax.random.key(0), SOL, p)
    pop_a, s_a = es.ask(None, state, p)
    pop_b, _ = es.ask(None, state, p)
    assert _equal(_dense(es, pop_a), _dense(es, pop_b))
    np.testing.assert_array_equal(jax.random.key_data(s_a.key), jax.random.key_data(state.key))


def test_noise_reuse_keeps_the_key_of_the_first_ask_of_each_period():
    es = eggroll.eggroll(population_size=4, solution=SOL, noise_reuse=2, optimizer=optax.sgd(0.0))
    p = es.default_params
    state = es.init(jax.random.key(0), SOL, p)
    pop0, s0 = es.ask(jax.random.key(1), state, p)
    state, _ = es.tell(jax.random.key(1), pop0, jnp.arange(4.0), s0, p)
    # generation 1 is in the same period: its key is not read
    pop1a, _ = es.ask(jax.random.key(2), state, p)
    pop1b, _ = es.ask(jax.random.key(3), state, p)
    assert _equal(_dense(es, pop0), _dense(es, pop1a)) and _equal(_dense(es, pop1a), _dense(es, pop1b))
    # generation 2 starts a new period: its key selects new noise
    _, s1 = es.ask(jax.random.key(2), state, p)
    state, _ = es.tell(jax.random.key(2), pop1a, jnp.arange(4.0), s1, p)
    pop2a, _ = es.ask(jax.random.key(4), state, p)
    pop2b, _ = es.ask(jax.random.key(5), state, p)
    assert not _equal(_dense(es, pop2a), _dense(es, pop2b))


def test_int_eggroll_ask_key_selects_the_noise():
    tree = {"w": jnp.asarray(np.arange(48).reshape(6, 8) % 7 - 3, jnp.int8), "v": jnp.zeros(8, jnp.int8)}
    es = ie.int_eggroll(8, tree, rank=2, table_size=4096)
    p = es.default_params
    state = es.init(jax.random.key(0), tree, p)
    pop1, s1 = es.ask(jax.random.key(1), state, p)
    pop2, s2 = es.ask(jax.random.key(2), state, p)
    pop1b, _ = es.ask(jax.random.key(1), state, p)
    m1, m2, m1b = (jax.tree.leaves(es.materialize(x)) for x in (pop1, pop2, pop1b))
    assert not any(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(m1, m2, strict=True))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(m1, m1b, strict=True))
    assert int(s1.seed) != int(s2.seed) and int(s1.seed) != int(state.seed)
    # the population carries the seed tell reads: tell with either state gives the same update
    fit = jnp.arange(8.0)
    t_ask, _ = es.tell(jax.random.key(5), pop1, fit, s1, p)
    t_init, _ = es.tell(jax.random.key(5), pop1, fit, state, p)
    for a, b in zip(jax.tree.leaves(t_ask.mean), jax.tree.leaves(t_init.mean), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tell_takes_the_noise_key_from_a_low_rank_population():
    """A low-rank population names its noise: telling it with the state from before ask gives the same update."""
    es = eggroll.eggroll(population_size=8, solution=SOL, optimizer=optax.sgd(0.1))
    p = es.default_params
    state = es.init(jax.random.key(0), SOL, p)
    pop, asked = es.ask(jax.random.key(1), state, p)
    fit = jnp.arange(8.0)
    with_asked, _ = es.tell(jax.random.key(2), pop, fit, asked, p)
    with_stale, _ = es.tell(jax.random.key(2), pop, fit, state, p)
    strip = lambda s: jax.tree.leaves(s.replace(key=jax.random.key_data(s.key)))  # noqa: E731
    for a, b in zip(strip(with_asked), strip(with_stale), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the state tell returns carries the noise key it used
    np.testing.assert_array_equal(jax.random.key_data(with_stale.key), jax.random.key_data(asked.key))


# --------------------------------------------------------------------------- item 2: tell reads a stacked population


def test_a_clipped_open_es_population_is_honoured_as_in_evosax():
    from evosax.algorithms import Open_ES
    from evosax.core.fitness_shaping import identity_fitness_shaping_fn

    sigma, mean = 0.5, jnp.array([0.3, -0.2, 0.9, 0.0])
    es = eggroll.open_es(
        population_size=8, solution=jnp.zeros(4), sigma_init=sigma, optimizer=optax.sgd(0.1), fitness_shaping="identity"
    )
    p = es.default_params
    pop, state = es.ask(jax.random.key(1), es.init(jax.random.key(0), mean, p), p)
    clipped = jnp.clip(pop, -0.25, 0.25)
    fit = jax.vmap(lambda x: jnp.sum((x - 1.0) ** 2))(clipped)
    s_clip, _ = es.tell(jax.random.key(2), clipped, fit, state, p)
    s_pop, _ = es.tell(jax.random.key(2), pop, fit, state, p)
    s_none, _ = es.tell(jax.random.key(2), None, fit, state, p)
    assert not np.allclose(np.asarray(s_clip.mean), np.asarray(s_pop.mean))  # the clipping is read
    np.testing.assert_allclose(np.asarray(s_pop.mean), np.asarray(s_none.mean), rtol=1e-5)  # unclipped: the noise
    # ... exactly as evosax's own Open_ES forms it from the same population and fitness
    ref = Open_ES(
        population_size=8,
        solution=jnp.zeros(4),
        optimizer=optax.sgd(0.1),
        std_schedule=optax.constant_schedule(sigma),
        fitness_shaping_fn=identity_fitness_shaping_fn,
    )
    with jax.numpy_rank_promotion("allow"):  # evosax relies on implicit rank promotion
        r_state = ref.init(jax.random.key(0), mean, ref.default_params)
        r_state, _ = ref.tell(jax.random.key(2), clipped, fit, r_state, ref.default_params)
    np.testing.assert_allclose(np.asarray(s_clip.mean), np.asarray(r_state.mean), rtol=1e-5, atol=1e-7)
    # the best member kept is the one that was evaluated (clipped)
    assert np.all(np.abs(np.asarray(s_clip.best_solution)) <= 0.25)


def test_a_clipped_dense_eggroll_population_is_honoured_and_a_low_rank_one_is_a_receipt():
    es = eggroll.eggroll(population_size=8, solution=SOL, dense_population=True, optimizer=optax.sgd(0.1))
    p = es.default_params
    pop, state = es.ask(jax.random.key(1), es.init(jax.random.key(0), SOL, p), p)
    clipped = jax.tree.map(lambda x: jnp.clip(x, -0.01, 0.01), pop)
    fit = jnp.arange(8.0)
    s_clip, _ = es.tell(jax.random.key(2), clipped, fit, state, p)
    s_pop, _ = es.tell(jax.random.key(2), pop, fit, state, p)
    assert not np.allclose(np.asarray(s_clip.mean["w"]), np.asarray(s_pop.mean["w"]))
    # the low-rank receipt: changed factors are not read (documented); the factors come from counters
    light = eggroll.eggroll(population_size=8, solution=SOL, optimizer=optax.sgd(0.1))
    lpop, lstate = light.ask(jax.random.key(1), light.init(jax.random.key(0), SOL, p), p)
    edited = lpop.replace(noise=jax.tree.map(lambda x: 0.0 * x, lpop.noise))
    a, _ = light.tell(jax.random.key(2), lpop, fit, lstate, p)
    b, _ = light.tell(jax.random.key(2), edited, fit, lstate, p)
    for x, y in zip(jax.tree.leaves(a.mean), jax.tree.leaves(b.mean), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tell_refuses_a_population_of_the_wrong_form():
    es = eggroll.open_es(population_size=8, solution=SOL)
    p = es.default_params
    pop, state = es.ask(jax.random.key(1), es.init(jax.random.key(0), SOL, p), p)
    with pytest.raises(ValueError, match=r"\[.b.\] .* has shape \(4, 3\); a stacked population has shape \(8, 3\)"):
        es.tell(jax.random.key(2), {"w": pop["w"][:4], "b": pop["b"][:4]}, jnp.zeros(8), state, p)
    with pytest.raises(ValueError, match="stacked pytree of the solution's structure"):
        es.tell(jax.random.key(2), pop["w"], jnp.zeros(8), state, p)


def test_the_sharded_tell_regenerates_and_does_not_read_a_stacked_population():
    """Documented: reading sharded members would sum parameter-sized arrays across devices."""
    es = eggroll.open_es(population_size=8, solution=SOL, optimizer=optax.sgd(0.1))
    ses = parallel.sharded(es, parallel.make_mesh(2))
    p = es.default_params
    pop, state = ses.ask(jax.random.key(1), ses.init(jax.random.key(0), SOL, p), p)
    fit = jnp.arange(8.0)
    clipped = jax.tree.map(lambda x: jnp.clip(x, -0.01, 0.01), pop)
    a, _ = ses.tell(jax.random.key(2), pop, fit, state, p)
    b, _ = ses.tell(jax.random.key(2), clipped, fit, state, p)
    c, _ = es.tell(jax.random.key(2), None, fit, jax.device_get(state), p)
    for x, y, z in zip(jax.tree.leaves(a.mean), jax.tree.leaves(b.mean), jax.tree.leaves(c.mean), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))


# --------------------------------------------------------------------------- item 3: silent cases


@pytest.mark.parametrize("name", FACTORIES)
def test_an_array_sigma_a_non_key_a_lone_group_and_a_jax_int_noise_reuse(name):
    """Found by a new-user audit: an array sigma and an int key passed init and failed later with XLA's words;
    group_size=1 was accepted and never moved the mean; noise_reuse refused a 0-d JAX int the others accept."""
    es = FACTORIES[name](population_size=8, solution=SOL, noise_reuse=jnp.array(2))
    with pytest.raises(ValueError, match=r"params.sigma_init must be one number .* shape \(2,\)"):
        es.init(jax.random.key(0), SOL, es.default_params.replace(sigma_init=jnp.array([0.1, 0.2])))
    for bad in (0, jnp.zeros(3, jnp.uint32)):
        with pytest.raises(ValueError, match=r"key must be a PRNG key such as jax.random.key\(0\)"):
            es.init(bad, SOL, es.default_params)
    assert es.init(jax.random.PRNGKey(0), SOL, es.default_params) is not None  # a raw key is a key
    with pytest.raises(ValueError, match="group_size=1 centres each member's fitness on itself"):
        FACTORIES[name](population_size=8, solution=SOL, antithetic=False, group_size=1)
    state = es.init(jax.random.key(0), SOL, es.default_params)
    pop, state = es.ask(jax.random.key(1), state, es.default_params)
    with pytest.raises(ValueError, match="fitness must be real numbers, got dtype complex64"):  # was cast, one warning
        es.tell(jax.random.key(2), pop, jnp.arange(8.0) + 1j, state, es.default_params)


@pytest.mark.parametrize("name", FACTORIES)
def test_sigma_zero_is_refused(name):
    with pytest.raises(ValueError, match="sigma_init must be a finite number > 0"):
        FACTORIES[name](population_size=8, solution=SOL, sigma_init=0.0)
    with pytest.raises(ValueError, match="sigma_init must be a finite number > 0"):
        FACTORIES[name](population_size=8, solution=SOL, sigma_init=float("nan"))
    es = FACTORIES[name](population_size=8, solution=SOL)
    with pytest.raises(ValueError, match=r"params.sigma_init must be a finite number > 0"):
        es.init(jax.random.key(0), SOL, es.default_params.replace(sigma_init=0.0))
    # traced (a vmapped sweep): no error is possible, and the step is skipped instead of writing NaN
    params = jax.vmap(lambda s: es.default_params.replace(sigma_init=s))(jnp.array([0.0, 0.1]))

    def one(pp):
        state = es.init(jax.random.key(0), SOL, pp)
        pop, state = es.ask(jax.random.key(1), state, pp)
        return es.tell(jax.random.key(2), pop, jnp.arange(8.0), state, pp)[0].mean

    means = jax.vmap(one)(params)
    np.testing.assert_array_equal(np.asarray(means["w"][0]), np.zeros((4, 3)))
    assert np.all(np.isfinite(np.asarray(means["w"]))) and not np.allclose(np.asarray(means["w"][1]), 0.0)


@pytest.mark.parametrize("name", FACTORIES)
def test_numpy_integers_are_accepted_and_bad_sizes_refused(name):
    es = FACTORIES[name](population_size=np.int64(8), solution=SOL, noise_reuse=np.int32(2))
    assert es.population_size == 8 and type(es.population_size) is int
    state = es.init(jax.random.key(0), SOL, es.default_params)
    pop, _ = es.ask(jax.random.key(1), state, es.default_params)
    assert jax.tree.leaves(es.materialize(pop))[0].shape[0] == 8
    for bad in (8.0, True, "8", 0):
        with pytest.raises(ValueError, match="population_size must be a positive int"):
            FACTORIES[name](population_size=bad, solution=SOL)
    assert ie.int_eggroll(np.int64(8), {"w": jnp.zeros((4, 3), jnp.int8)}, rank=np.int64(2)).population_size == 8


def test_rank_above_a_matrix_side_is_clipped_with_a_warning():
    with pytest.warns(UserWarning, match=r"rank=10 exceeds .*\['w'\] \(4, 3\) -> 3"):
        es = eggroll.eggroll(population_size=8, solution=SOL, rank=10)
    state = es.init(jax.random.key(0), SOL, es.default_params)
    pop, _ = es.ask(jax.random.key(1), state, es.default_params)
    a, b = pop.noise["w"]
    assert a.shape == (4, 4, 3) and b.shape == (4, 3, 3)  # rank 3 factors, not 10
    # each member's perturbation has unit-variance entries: A B^T / sqrt(3)
    with pytest.warns(UserWarning, match="rank=10 exceeds"):
        big = eggroll.eggroll(population_size=4096, solution=SOL, rank=10, sigma_init=1.0)
    pop, _ = big.ask(jax.random.key(2), big.init(jax.random.key(0), SOL, big.default_params), big.default_params)
    w = np.asarray(big.materialize(pop)["w"])
    assert abs(w.var() - 1.0) < 0.05
    assert np.linalg.matrix_rank(w[0]) == 3
    # a rank that fits every matrix warns nothing
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eggroll.eggroll(population_size=8, solution=SOL, rank=3)


def test_a_float_mean_for_an_int_leaf_is_refused():
    sol = {"w": jnp.zeros(3), "steps": jnp.zeros((), jnp.int32)}
    es = eggroll.open_es(population_size=4, solution=sol)
    with pytest.raises(ValueError, match=r"'steps'\] is int32 in the solution template but float32 in the mean"):
        es.init(jax.random.key(0), {"w": jnp.zeros(3), "steps": jnp.asarray(2.7)}, es.default_params)
    state = es.init(jax.random.key(0), {"w": jnp.zeros(3), "steps": jnp.asarray(2)}, es.default_params)
    assert int(state.mean["steps"]) == 2 and state.mean["steps"].dtype == jnp.int32


@pytest.mark.parametrize("name", FACTORIES)
def test_identity_shaping_overflow_skips_the_step(name):
    es = FACTORIES[name](population_size=8, solution=jnp.zeros(3), fitness_shaping="identity", optimizer=optax.sgd(1.0))
    p = es.default_params
    state = es.init(jax.random.key(0), jnp.ones(3), p)
    pop, state = es.ask(jax.random.key(1), state, p)
    huge = jnp.array([3e38, -3e38, 3e38, 3e38, -3e38, 3e38, 3e38, -3e38], jnp.float32)
    new, metrics = es.tell(jax.random.key(2), pop, huge, state, p)
    np.testing.assert_array_equal(np.asarray(new.mean), np.ones(3))  # skipped: the mean is unchanged
    assert not np.isfinite(float(metrics["grad_norm"])) and float(metrics["update_norm"]) == 0.0
    assert int(new.generation_counter) == 1
    # the next ordinary generation moves again
    pop, state2 = es.ask(jax.random.key(3), new, p)
    after, _ = es.tell(jax.random.key(4), pop, jnp.arange(8.0), state2, p)
    assert np.all(np.isfinite(np.asarray(after.mean))) and not np.array_equal(np.asarray(after.mean), np.ones(3))


def test_a_single_member_has_centred_rank_zero_and_a_rank_shaped_size_one_strategy_is_refused():
    np.testing.assert_array_equal(np.asarray(eggroll.shaping.centered_rank(jnp.array([5.0]))), [0.0])
    for shaping in ("centered_rank", "z_score"):
        with pytest.raises(ValueError, match="population_size=1 .* never move"):
            eggroll.open_es(population_size=1, solution=jnp.zeros(3), antithetic=False, fitness_shaping=shaping)
    # identity shaping still steps with one member, away from it when its fitness is positive
    es = eggroll.open_es(
        population_size=1, solution=jnp.zeros(3), antithetic=False, fitness_shaping="identity", optimizer=optax.sgd(0.1)
    )
    p = es.default_params
    pop, state = es.ask(jax.random.key(1), es.init(jax.random.key(0), jnp.zeros(3), p), p)
    new, _ = es.tell(jax.random.key(2), pop, jnp.array([1.0]), state, p)
    step = np.asarray(new.mean) - 0.0
    assert float(np.dot(step, np.asarray(pop[0]))) < 0
