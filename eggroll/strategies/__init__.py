"""The strategies, and :data:`REGISTRY`: every strategy by name (evosax-style).

Each entry is a factory with evosax 0.3's signature
``factory(population_size, solution, **options) -> Strategy``. Commands, the
BBOB runner, the benchmarks and the test suite look strategies up here, so a
new strategy is one file plus one entry. :func:`make` also builds any evosax
algorithm by ``"evosax:<Class>"`` (:func:`~eggroll.strategies.from_evosax.from_evosax`);
two common baselines, SNES and CMA-ES, are registered by name.

Example:
    >>> import jax.numpy as jnp
    >>> from eggroll.strategies import REGISTRY, make
    >>> sorted(REGISTRY)
    ['eggroll', 'evollm', 'evosax:CMA_ES', 'evosax:SNES', 'int_eggroll', 'open_es']
    >>> es = make("open_es", 8, jnp.zeros(3), sigma_init=0.1)
    >>> es.population_size
    8
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

# The submodules keep their names (``eggroll.strategies.int_eggroll`` is the module); the factories are
# ``eggroll.eggroll``, ``eggroll.open_es`` ... at the package root, and here by name.
from eggroll.strategies import eggroll as _eggroll
from eggroll.strategies import evollm as _evollm
from eggroll.strategies import from_evosax as _from_evosax
from eggroll.strategies import int_eggroll as _int_eggroll
from eggroll.strategies import open_es as _open_es
from eggroll.types import Strategy

__all__ = ["REGISTRY", "make"]

REGISTRY: MappingProxyType[str, Callable[..., Strategy]] = MappingProxyType(
    {
        "eggroll": _eggroll.eggroll,  # low-rank A B^T perturbations of matrices (float)
        "open_es": _open_es.open_es,  # full-rank Gaussian OpenAI-ES
        "int_eggroll": _int_eggroll.int_eggroll,  # integer EGGROLL for int8 models
        "evollm": _evollm.evollm,  # a language model proposes the next mean
        "evosax:SNES": functools.partial(_from_evosax.from_evosax, "SNES"),  # baselines from evosax
        "evosax:CMA_ES": functools.partial(_from_evosax.from_evosax, "CMA_ES"),
    }
)


def make(name: str, population_size: int, solution: Any, **options: Any) -> Strategy:
    """Build the strategy registered as ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name.startswith("evosax:") and name not in REGISTRY:
        return _from_evosax.from_evosax(name.split(":", 1)[1], population_size, solution, **options)
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(sorted(REGISTRY))} or evosax:<Class>")
    return REGISTRY[name](population_size, solution, **options)
