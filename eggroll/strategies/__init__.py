"""The strategies, and :data:`REGISTRY`: every strategy by name (evosax-style).

Each entry is a factory with evosax 0.3's signature
``factory(population_size, solution, **options) -> Strategy``. Commands, the
BBOB runner, the benchmarks and the test suite look strategies up here, so a
new strategy is one file plus one entry.

Example:
    >>> import jax.numpy as jnp
    >>> from eggroll.strategies import REGISTRY, make
    >>> sorted(REGISTRY)
    ['eggroll', 'evollm', 'int_eggroll', 'open_es']
    >>> es = make("open_es", 8, jnp.zeros(3), sigma_init=0.1)
    >>> es.population_size
    8
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from eggroll.strategies.eggroll import eggroll
from eggroll.strategies.evollm import evollm
from eggroll.strategies.int_eggroll import int_eggroll
from eggroll.strategies.open_es import open_es
from eggroll.types import Strategy

__all__ = ["REGISTRY", "eggroll", "evollm", "int_eggroll", "make", "open_es"]

REGISTRY: MappingProxyType[str, Callable[..., Strategy]] = MappingProxyType(
    {
        "eggroll": eggroll,  # low-rank A B^T perturbations of matrices (float)
        "open_es": open_es,  # full-rank Gaussian OpenAI-ES
        "int_eggroll": int_eggroll,  # integer EGGROLL for int8 models
        "evollm": evollm,  # a language model proposes the next mean
    }
)


def make(name: str, population_size: int, solution: Any, **options: Any) -> Strategy:
    """Build the strategy registered as ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(sorted(REGISTRY))}") from None
    return factory(population_size, solution, **options)
