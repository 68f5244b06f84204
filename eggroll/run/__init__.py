"""The shared run machinery: the one loop, checkpoints, metrics, progress.

- :mod:`eggroll.run.loop`: :func:`~eggroll.run.loop.run` and the
  :class:`~eggroll.run.loop.Task` hooks every command plugs into;
- :mod:`eggroll.run.train`: :func:`train`, a strategy on a fitness function in one call;
- :mod:`eggroll.run.checkpoint`, :mod:`eggroll.run.logging`, :mod:`eggroll.run.progress`.
"""

from eggroll.run.loop import RunOptions, RunResult, Task, is_wall_clock, run
from eggroll.run.train import StrategyTask, TrainResult, mean_of, train

__all__ = ["RunOptions", "RunResult", "StrategyTask", "Task", "TrainResult", "is_wall_clock", "mean_of", "run", "train"]
