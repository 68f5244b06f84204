"""Any evosax 0.3 algorithm as an eggroll :class:`~eggroll.types.Strategy` (registry names ``evosax:<Class>``).

evosax's algorithms already have eggroll's call pattern (``init / ask / tell`` with keys, states and
params); what this adds is what eggroll's commands and run loop expect of a strategy: ``maximize``,
an initial step size under eggroll's name (``sigma_init``), a ``name``, ``materialize`` and the
``antithetic`` / ``regenerates`` flags. It lets a baseline such as SNES or CMA-ES run wherever an
eggroll strategy runs (``eggroll rl --strategy evosax:SNES``, the benchmarks, :func:`eggroll.run.train`).

Example:
    >>> import jax.numpy as jnp
    >>> from eggroll.strategies import make
    >>> es = make("evosax:SNES", 8, jnp.zeros(3), sigma_init=0.1, maximize=True)
    >>> es.name, es.population_size
    ('evosax:SNES', 8)
"""

from __future__ import annotations

import inspect
from typing import Any

import jax

from eggroll.types import Strategy

__all__ = ["from_evosax"]

_STEP_SIZE_FIELDS = ("std_init", "sigma_init")  # what evosax 0.3 calls the initial step size
_SIGNED_METRICS = ("best_fitness", "best_fitness_in_generation")


def check_distribution_based(cls: type) -> None:
    """Refuse an evosax class that keeps a population instead of a mean (``SimpleGA``, ``PSO``,
    ``DifferentialEvolution`` ...): its ``init`` takes a population and its fitness, not eggroll's mean."""
    from evosax.algorithms.distribution_based.base import DistributionBasedAlgorithm

    if not issubclass(cls, DistributionBasedAlgorithm):
        raise ValueError(
            f"evosax {cls.__name__} is not a distribution-based algorithm (it keeps a population, not a mean), so it "
            "cannot run as an eggroll strategy; use a distribution-based one, e.g. 'SNES', 'CMA_ES', 'Open_ES', "
            "'xNES', 'PGPE', or call evosax directly"
        )


def from_evosax(
    algorithm: str | type,
    population_size: int,
    solution: Any,
    *,
    maximize: bool = False,
    sigma_init: float | None = None,
    **options: Any,
) -> Strategy:
    """Wrap the evosax algorithm ``algorithm`` (a distribution-based class of ``evosax.algorithms`` or its name,
    e.g. ``"SNES"``).

    Args:
        algorithm: the evosax class, or its name in ``evosax.algorithms``.
        population_size: members per generation.
        solution: a pytree shaped like one solution (evosax flattens it itself).
        maximize: maximise the fitness (evosax minimises: the wrapper negates the fitness it tells, and
            the metrics ``best_fitness`` / ``best_fitness_in_generation`` are reported in your sign).
        sigma_init: the initial step size (evosax's ``std_init`` / ``sigma_init`` param); ``None`` keeps
            evosax's default.
        **options: passed to the evosax class (e.g. ``optimizer=`` for the distribution-based ones).
            An option the class does not take is refused with the options it does take.

    Raises:
        ValueError: an unknown algorithm, a population-based one (``SimpleGA``, ``PSO``, ...: it has no mean),
            an option the class does not take, or ``sigma_init`` for an algorithm without an initial step size.
    """
    import evosax.algorithms as algorithms

    cls = getattr(algorithms, algorithm, None) if isinstance(algorithm, str) else algorithm
    if not isinstance(cls, type):
        raise ValueError(f"unknown evosax algorithm {algorithm!r}: use a class of evosax.algorithms, e.g. 'SNES'")
    check_distribution_based(cls)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "population_size", "solution"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"evosax {cls.__name__} takes no {unknown}; its options are {sorted(accepted)}")
    es = cls(population_size, solution, **options)
    params = es.default_params
    if sigma_init is not None:
        field = next((f for f in _STEP_SIZE_FIELDS if hasattr(params, f)), None)
        if field is None:
            raise ValueError(f"evosax {cls.__name__} has no initial step size to set: leave sigma_init out")
        params = params.replace(**{field: sigma_init})
    sign = -1.0 if maximize else 1.0

    def ask(key, state, params):
        with jax.numpy_rank_promotion("allow"):  # evosax broadcasts implicitly
            return es.ask(key, state, params)

    def tell(key, population, fitness, state, params):
        with jax.numpy_rank_promotion("allow"):
            state, metrics = es.tell(key, population, sign * fitness, state, params)
        return state, {k: sign * v if k in _SIGNED_METRICS else v for k, v in metrics.items()}

    return Strategy(
        init=es.init,
        ask=ask,
        tell=tell,
        default_params=params,
        population_size=int(population_size),
        name=f"evosax:{cls.__name__}",
        get_mean=es.get_mean,
        materialize=lambda population: population,  # evosax populations are stacked solutions already
    )
