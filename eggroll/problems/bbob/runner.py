"""The BBOB benchmark runner, now :mod:`eggroll.apps.bbob` (a task of the one run loop); the old names stay here.

``BBOBTask``, ``BUILTIN_STRATEGIES``, ``BenchmarkResult``, ``COCO_DIMENSIONS``, ``Competitor``, ``TARGETS``,
``make_competitor`` and ``run_benchmark`` are those of :mod:`eggroll.apps.bbob`.
"""

from eggroll.apps.bbob import *  # noqa: F403
from eggroll.apps.bbob import __all__  # noqa: F401
