"""COCO's BBOB suites in JAX, identical to ``cocoex``: ``bbob``, ``bbob-noisy``, ``bbob-largescale``, ``bbob-mixint``.

Quick start::

    from eggroll.problems import bbob

    f = bbob.bbob_function(8, instance=1, dimension=10)    # jitted x -> f(x)
    suite = bbob.BBOBSuite("1-24", "1-5", dimension=10)       # 120 problems
    values = suite.evaluate(points)                           # (120, N) in one call
    noisy = bbob.BBOBSuite("101-130", "1-15", dimension=10, suite="bbob-noisy")
    noisy.evaluate(points, noise_seeds=noisy.coco_noise_seeds(len(points)))  # cocoex's noisy values
    large = bbob.BBOBSuite("1-24", "1-15", dimension=640, suite="bbob-largescale")  # block rotations
    mixed = bbob.BBOBSuite("1-24", "1-15", dimension=80, suite="bbob-mixint")  # 4/5 integer variables

See ``docs/bbob.md`` for the design and the runner.
"""

from eggroll.problems.bbob.coco_rng import fopt, gauss, rotation, unif, xopt
from eggroll.problems.bbob.functions import delta, delta_static
from eggroll.problems.bbob.instances import (
    FUNCTION_IDS,
    FUNCTION_NAMES,
    MAX_DIMENSION,
    NOISY_FUNCTION_IDS,
    SUITES,
    BBOBInstance,
    make_instance,
    stack_instances,
    validate_ids,
)
from eggroll.problems.bbob.largescale import LARGESCALE_DIMENSIONS, LargeScaleInstance
from eggroll.problems.bbob.mixint import MIXINT_DIMENSIONS, MixintInstance
from eggroll.problems.bbob.suite import BBOBSuite, bbob_function, check_points, evaluate, parse_ids

__all__ = [
    "BBOBInstance",
    "BBOBSuite",
    "FUNCTION_IDS",
    "FUNCTION_NAMES",
    "LARGESCALE_DIMENSIONS",
    "LargeScaleInstance",
    "MAX_DIMENSION",
    "MIXINT_DIMENSIONS",
    "MixintInstance",
    "NOISY_FUNCTION_IDS",
    "SUITES",
    "bbob_function",
    "check_points",
    "delta",
    "delta_static",
    "evaluate",
    "fopt",
    "gauss",
    "make_instance",
    "parse_ids",
    "rotation",
    "stack_instances",
    "unif",
    "validate_ids",
    "xopt",
]


def __getattr__(name: str):  # lazy: the runner pulls in optax/evosax only when used
    if name in ("run_benchmark", "make_competitor", "Competitor", "BenchmarkResult", "TARGETS", "BUILTIN_STRATEGIES"):
        from eggroll.problems.bbob import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'eggroll.problems.bbob' has no attribute {name!r}")
