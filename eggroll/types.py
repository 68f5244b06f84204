"""Shared types: the :class:`Strategy` tuple every ES in eggroll is built as."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any
Solution = PyTree
Population = PyTree
Fitness = jax.Array
Params = Any
State = Any
Metrics = dict[str, Any]


class Strategy(NamedTuple):
    """An evolution strategy: pure functions plus their default numeric params.

    The call pattern is evosax 0.3's, so an evosax loop runs unchanged::

        params = es.default_params
        state = es.init(key, mean, params)
        population, state = es.ask(key, state, params)
        state, metrics = es.tell(key, population, fitness, state, params)

    Shape-determining choices (population size, rank, antithetic sampling) are
    closed over by the factory that built the strategy; numbers a user may sweep
    or ``vmap`` (sigma, learning-rate scale, weight decay ...) live in
    ``default_params``. Fitness is minimised unless the factory was given
    ``maximize=True``.

    Attributes:
        init: ``(key, mean, params) -> state``.
        ask: ``(key, state, params) -> (population, state)``.
        tell: ``(key, population, fitness, state, params) -> (state, metrics)``.
        default_params: a pytree of traceable numbers.
        population_size: number of members per generation.
        name: a short human-readable name.
        get_mean: ``state -> solution`` (the current mean, same pytree as given).
        materialize: ``population -> stacked solutions`` with a leading
            population axis (what an evosax-style fitness function expects).
        antithetic: members ``2k`` and ``2k + 1`` are mirrored pairs (sharding
            keeps a pair on one device).
        regenerates: ``tell`` can rebuild every perturbation from the state
            ``ask`` returned, so it accepts ``population=None`` (the sharded
            wrapper passes ``None`` so that no population crosses devices).
    """

    init: Callable[..., State]
    ask: Callable[..., tuple[Population, State]]
    tell: Callable[..., tuple[State, Metrics]]
    default_params: Params
    population_size: int
    name: str
    get_mean: Callable[[State], Solution]
    materialize: Callable[[Population], Solution]
    antithetic: bool = False
    regenerates: bool = False
