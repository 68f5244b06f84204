"""EGGROLL: evolution strategies with low-rank ``A B^T`` perturbations.

Each matrix leaf ``W`` (shape ``(*rows, cols)``) of member ``i`` is perturbed
by ``sigma * A_i B_i^T / sqrt(r)`` with ``A_i (*rows, r)`` and ``B_i (cols, r)``
standard Gaussian; other floating leaves get full-rank Gaussian noise. The
population holds only the factors, and the update is formed from them,
``(diag(w) A)^T B``, never from per-member matrices.

References:
    Sarkar et al. "Evolution Strategies at the Hyperscale", arXiv:2511.16652, 2025.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from eggroll import population as pop_lib
from eggroll.strategies import _core
from eggroll.types import Strategy


def eggroll(
    population_size: int,
    solution: Any,
    *,
    rank: int = 1,
    optimizer: optax.GradientTransformation | None = None,
    sigma_init: float = 0.05,
    antithetic: bool = True,
    fitness_shaping: str | Callable | None = None,
    group_size: int | None = None,
    maximize: bool = False,
    noise_reuse: int = 1,
    weight_decay: float = 0.0,
    lowrank: Callable | None = None,
    trainable: Any = None,
    noise: str = "hash",
    track_best: bool = True,
    dense_population: bool = False,
) -> Strategy:
    """Build an EGGROLL strategy.

    ``ask`` returns a :class:`~eggroll.population.LowRankPopulation`; score it
    with :func:`eggroll.evaluate` (your function receives matrix leaves as
    :class:`~eggroll.lowrank.LowRank`), :func:`eggroll.apply_flax` for Flax
    models, or ``es.materialize(population)`` for small problems. With
    ``dense_population=True``, ``ask`` returns the stacked dense population
    itself (what ``es.materialize`` gives), so a loop written for evosax (a
    fitness function ``vmap``-ped over the population, e.g. evosax's own
    problems) runs unchanged; the update is the same to float32 rounding.

    Args:
        population_size: members per generation (even with ``antithetic``).
        solution: a template pytree (dict, Flax variables, NNX state ...).
        rank: rank ``r`` of each matrix perturbation; a matrix whose smaller
            side is below ``r`` uses that side instead (with a warning).
        optimizer: any optax transformation; default ``optax.adam(0.01)``.
        sigma_init: default initial perturbation scale (``params.sigma_init``).
        antithetic: members ``2k`` and ``2k + 1`` share factors, sign flipped.
        fitness_shaping: ``"centered_rank"`` (default), ``"z_score"`` (the default
            with ``group_size``), ``"identity"`` or a callable ``fitness -> weights``.
        group_size: members ``[g*G, (g+1)*G)`` share an input; their fitness is
            centred per group and divided by the pooled within-group std (needs ``"z_score"``).
        maximize: fitness is a reward to maximise (default: minimise).
        noise_reuse: generations that share one draw of noise (>= 1).
        weight_decay: default L2 coefficient (``params.weight_decay``).
        lowrank: ``callable(path, leaf) -> bool`` choosing which ``ndim >= 2``
            leaves get low-rank noise (default: all of them).
        trainable: which leaves evolve: pytree of bools or ``callable(path, leaf)``.
        noise: Gaussian generator, ``"hash"`` (fast, default) or ``"threefry"``
            (see :mod:`eggroll.noise`).
        track_best: keep a dense copy of the best member seen (``best_solution``,
            as evosax); turn off for large models to save one copy of the weights.
        dense_population: ``ask`` returns stacked dense members ``(N, ...)`` per
            leaf instead of the light low-rank population: for small problems and
            third-party fitness functions. It costs ``N`` copies of the parameters,
            so keep the default for models. ``tell`` accepts either form: a
            stacked population is read as evosax reads it, ``(x - mean) / sigma``
            per member (clipped members are honoured), which equals the
            regenerated noise of the low-rank form to float32 rounding.

    Returns:
        A :class:`~eggroll.types.Strategy`.
    """
    if fitness_shaping is None:
        fitness_shaping = "centered_rank" if group_size is None else "z_score"
    cfg = _core.make_config(
        population_size=population_size,
        solution=solution,
        optimizer=optax.adam(0.01) if optimizer is None else optimizer,
        antithetic=antithetic,
        noise_reuse=noise_reuse,
        maximize=maximize,
        fitness_shaping=fitness_shaping,
        group_size=group_size,
        rank=rank,
        lowrank=lowrank,
        trainable=trainable,
        noise=noise,
        track_best=track_best,
    )

    def lowrank_population(state):
        pairs = jnp.arange(cfg.num_noise, dtype=jnp.int32)
        noise = _core.pair_noise(cfg, state.key, state.generation_counter, pairs)
        return pop_lib.LowRankPopulation(
            mean=state.mean,
            noise=jax.tree.unflatten(cfg.treedef, noise),
            sigma=state.sigma,
            index=jnp.arange(cfg.population_size, dtype=jnp.int32),
            key=state.key,
            antithetic=antithetic,
            rank=cfg.rank,
        )

    members = lambda state: pop_lib.materialize(lowrank_population(state))  # noqa: E731

    return _core.build_strategy(
        cfg,
        members if dense_population else lowrank_population,
        name="eggroll",
        materialize=jax.jit(pop_lib.materialize),
        sigma_init=sigma_init,
        weight_decay=weight_decay,
    )
