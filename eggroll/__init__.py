"""eggroll: evolution strategies in JAX built around low-rank perturbations.

Fitness is minimised by default; build a strategy with ``maximize=True`` for
rewards. Metrics are reported in your own sign.
"""

from eggroll import lowrank, noise, shaping
from eggroll.flax_bridge import apply_flax, apply_nnx
from eggroll.lowrank import LowRank
from eggroll.population import LowRankPopulation, evaluate, materialize, member, member_ids
from eggroll.strategies._core import Params, State
from eggroll.strategies.eggroll import eggroll
from eggroll.strategies.evollm import evollm
from eggroll.strategies.int_eggroll import int_eggroll
from eggroll.strategies.open_es import open_es
from eggroll.types import Strategy

__version__ = "0.1.0"

# Modules with heavier imports (orbax, tensorboardX, ...) load on first use:
# ``eggroll.parallel``, ``eggroll.checkpoint``, ``eggroll.run``, ``eggroll.logging``.
_LAZY_MODULES = {"checkpoint", "logging", "parallel", "run"}


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"eggroll.{name}")
    raise AttributeError(f"module 'eggroll' has no attribute {name!r}")


__all__ = [
    "LowRank",
    "LowRankPopulation",
    "Params",
    "State",
    "Strategy",
    "apply_flax",
    "apply_nnx",
    "eggroll",
    "evaluate",
    "evollm",
    "int_eggroll",
    "lowrank",
    "materialize",
    "member",
    "member_ids",
    "noise",
    "open_es",
    "shaping",
]
