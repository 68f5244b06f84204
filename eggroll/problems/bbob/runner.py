"""The BBOB benchmark runner, now :mod:`eggroll.apps.bbob` (a task of the one run loop); the old names stay here."""

from eggroll.apps.bbob import (
    BUILTIN_STRATEGIES,
    COCO_DIMENSIONS,
    TARGETS,
    BBOBTask,
    BenchmarkResult,
    Competitor,
    make_competitor,
    run_benchmark,
)

__all__ = [
    "BBOBTask",
    "BUILTIN_STRATEGIES",
    "BenchmarkResult",
    "COCO_DIMENSIONS",
    "Competitor",
    "TARGETS",
    "make_competitor",
    "run_benchmark",
]
