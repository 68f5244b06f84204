"""Train a strategy on a fitness function in one call: the Python API over :func:`eggroll.run.loop.run`.

:func:`train` runs ``num_generations`` of ask / evaluate / tell with
:func:`eggroll.parallel.generation_step` (one device, or the population split
over ``mesh``), shows a rich progress bar, writes metrics with
:class:`eggroll.run.logging.MetricsLogger`, saves an orbax checkpoint every
``checkpoint_every`` generations and when SIGTERM / Ctrl-C arrives, and with
``resume=True`` continues from the newest checkpoint exactly (bit for bit) as
if it had never stopped.

Randomness: ``key`` is split once into the strategy's init key and a run key;
generation ``g`` (1-based) is evaluated with ``fold_in(run_key, g - 1)``. The checkpoint
stores the strategy state (mean, optimizer state, sigma, noise key,
generation), the fitness function's state and the run key, so nothing depends
on how many times the run was stopped.

Example:
    >>> import jax, jax.numpy as jnp, eggroll
    >>> es = eggroll.open_es(population_size=8, solution=jnp.zeros(3))
    >>> res = train(es, lambda x, key: jnp.sum((x - 1.0) ** 2), jnp.zeros(3), key=jax.random.key(0),
    ...             num_generations=5, progress=False)
    >>> res.generation, res.interrupted
    (5, False)
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from eggroll import parallel
from eggroll.run.loop import RunOptions, Task, run
from eggroll.types import Strategy

__all__ = ["StrategyTask", "TrainResult", "mean_of", "strategy_settings", "train"]


_cached_step = functools.lru_cache(maxsize=8)(parallel.generation_step)


def _step(es: Strategy, fitness_fn: Callable, mesh: Any, population_level: bool) -> Callable:
    """The jitted generation, reused across ``train`` calls on the same strategy (no recompilation on resume)."""
    try:
        return _cached_step(es, fitness_fn, mesh=mesh, population_level=population_level)
    except TypeError:  # unhashable params inside the strategy
        return parallel.generation_step(es, fitness_fn, mesh=mesh, population_level=population_level)


def strategy_settings(es: Strategy, params: Any, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint (JSON): the strategy's name, population size and
    scalar params (``sigma_init``, ``lr_scale``, ...; evosax's too), then ``settings``."""
    out: dict[str, Any] = {"strategy": es.name, "population_size": int(es.population_size)}
    if hasattr(params, "_asdict"):  # eggroll's Params
        leaves = list(params._asdict().items())
    else:  # any pytree (evosax's params dataclass): its scalar leaves, named by their path
        named = jax.tree_util.tree_flatten_with_path(params)[0]
        leaves = [(".".join(str(getattr(k, "name", getattr(k, "key", k))) for k in path), v) for path, v in named]
    for name, value in leaves:
        if np.size(value) == 1:
            x = float(np.asarray(value).reshape(()))
            out[name] = x if math.isfinite(x) else str(x)  # (NaN never equals itself)
    out.update(settings or {})
    return out


def _function_name(fn: Any) -> str:
    """The function's qualified name, without its module (``__main__`` in a script, the file's name when imported)."""
    fn = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(fn, "__qualname__", type(fn).__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        state: the final strategy state (``es.get_mean(state)`` is the solution).
        fn_state: the fitness function's final state (``None`` if stateless).
        generation: completed generations.
        interrupted: stopped early by SIGTERM / Ctrl-C (a checkpoint was saved).
        resumed_from: the checkpoint step the run started from (``None`` if fresh).
        history: the logged rows (scalar metrics per logged generation; ``generation``
            counts completed generations, 1 after the first, as in every command).
        checkpoint_dir: where checkpoints went (``None`` if disabled).
    """

    state: Any
    fn_state: Any
    generation: int
    interrupted: bool = False
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_dir: str | None = None


class StrategyTask(Task):
    """A strategy on a fitness function as a :class:`eggroll.run.loop.Task` (what :func:`train` runs).

    The carry is ``{"state", "fn_state", "run_key"}``; generation ``g`` uses
    ``fold_in(run_key, g - 1)``, so a resumed run draws the same keys. A resume must match
    :meth:`settings`: :func:`strategy_settings`, the fitness function's name and the key (and ``settings``).
    """

    name = "train"
    label = "gen"
    may_change = "num_generations, checkpoint_every, log_every, the loggers, progress, callback, stop_after and mesh"

    def __init__(
        self,
        es,
        fitness_fn,
        mean,
        key,
        *,
        params=None,
        fn_state=None,
        population_level=False,
        mesh=None,
        settings: Mapping[str, Any] | None = None,
    ):
        self.es, self.population_size = es, es.population_size
        self.params = es.default_params if params is None else params
        raw = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        own = {"fitness_fn": _function_name(fitness_fn), "key": np.asarray(raw).ravel().tolist()}
        self._settings = strategy_settings(es, self.params, {**own, **(settings or {})})
        init_key, run_key = jax.random.split(key)
        if mesh is not None:
            placed = parallel.replicate((init_key, mean, self.params, run_key, fn_state), mesh)
            init_key, mean, self.params, run_key, fn_state = placed
        self._first = (init_key, mean, run_key, fn_state)
        self._es_init = es.init if mesh is None else parallel.sharded(es, mesh).init
        self._step = _step(es, fitness_fn, mesh, population_level)

    def settings(self) -> dict[str, Any]:
        return self._settings

    def init(self) -> dict[str, Any]:
        init_key, mean, run_key, fn_state = self._first
        return {"state": self._es_init(init_key, mean, self.params), "fn_state": fn_state, "run_key": run_key}

    def step(self, carry, generation):
        key = jax.random.fold_in(carry["run_key"], generation - 1)
        state, fn_state, metrics = self._step(key, carry["state"], self.params, carry["fn_state"])
        scalars = {k: v for k, v in metrics.items() if k != "best_solution"}
        return {**carry, "state": state, "fn_state": fn_state}, scalars

    def describe(self, row):
        best, mean = (row.get(k) for k in ("best_fitness", "mean_fitness"))
        nan = float("nan")
        return f"best {nan if best is None else best:.4g} mean {nan if mean is None else mean:.4g}"


def train(
    es: Strategy,
    fitness_fn: Callable[..., Any],
    mean: Any,
    *,
    key: jax.Array,
    num_generations: int,
    params: Any = None,
    fn_state: Any = None,
    population_level: bool = False,
    mesh: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    max_to_keep: int = 3,
    resume: bool = False,
    resume_from: int | None = None,
    settings: Mapping[str, Any] | None = None,
    log_dir: str | os.PathLike | None = None,
    log_every: int = 1,
    tensorboard: bool | None = None,
    wandb: bool | Mapping[str, Any] | None = None,
    mlflow: bool | Mapping[str, Any] | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``es`` on ``fitness_fn`` for ``num_generations`` generations (through :func:`eggroll.run.loop.run`).

    Args:
        es: the strategy.
        fitness_fn: ``fitness_fn(member_params, key) -> scalar`` (member level),
            or with ``population_level=True``
            ``fitness_fn(key, population, fn_state) -> (fitness, fn_state)``.
        mean: the initial solution.
        key: the run's seed key.
        num_generations: total generations (including any already done when resuming).
        params: strategy params (default ``es.default_params``).
        fn_state: the fitness function's initial state (checkpointed with the rest).
        population_level: see ``fitness_fn``.
        mesh: split the population over this device mesh (``None``: one device).
        checkpoint_dir: save orbax checkpoints here (``None``: no checkpoints).
        checkpoint_every: generations between checkpoints.
        max_to_keep: checkpoints kept.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` (a
            fresh start if there is none yet). Without it, a ``checkpoint_dir``
            that already holds checkpoints is an error (nothing is overwritten). The
            checkpoint must have the same :meth:`StrategyTask.settings`: strategy, population
            size, scalar params, fitness function (by name) and ``key``; each difference is named.
            (An optimizer's learning rate lives in the optax closure and is not compared.)
        resume_from: with ``resume``, continue from this checkpoint step instead of the newest
            (e.g. the newest one that verifies when a newer one is damaged; see
            :attr:`eggroll.run.loop.RunOptions.resume_from`).
        settings: extra JSON a resumed run must share with its checkpoint (e.g. a dataset's name).
        log_dir: write ``metrics.jsonl`` / ``metrics.csv`` / TensorBoard here
            (default: ``checkpoint_dir``; ``None`` and no checkpoint dir: no files). A fresh
            run refuses a folder that already holds another run's rows. The run holds
            ``checkpoint_dir`` and ``log_dir`` (a lock file) while it runs: a second run into
            them is refused.
        log_every: log (and sync with the device) every this many generations.
        tensorboard: see :class:`eggroll.run.logging.MetricsLogger`.
        wandb: also log to Weights & Biases (see :class:`eggroll.run.logging.MetricsLogger`).
        mlflow: also log to MLflow (see :class:`eggroll.run.logging.MetricsLogger`).
        progress: show a rich progress bar (process 0 only).
        callback: ``callback(generation, row)`` after each logged generation.
        stop_after: stop (with a checkpoint, as if interrupted) once this many
            generations are complete; for tests and time-boxed jobs.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad arguments.
        eggroll.checkpoint.CheckpointError: ``resume`` with a corrupt or mismatched checkpoint.
    """
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 0:
        raise ValueError(f"num_generations must be a non-negative int, got {num_generations!r}.")
    if log_every < 1:
        raise ValueError(f"log_every={log_every} must be >= 1.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where the run to continue saved its checkpoints).")
    if resume and num_generations == 0:
        raise ValueError(
            "num_generations=0 with resume=True: give the run's total generations (a number <= the checkpoint's "
            "generation returns the checkpoint's state without running)"
        )
    task = StrategyTask(
        es,
        fitness_fn,
        mean,
        key,
        params=params,
        fn_state=fn_state,
        population_level=population_level,
        mesh=mesh,
        settings=settings,
    )
    if num_generations == 0:
        carry = task.init()
        return TrainResult(carry["state"], carry["fn_state"], 0)
    options = RunOptions(
        generations=num_generations,
        checkpoint_every=checkpoint_every,
        resume=resume,
        resume_from=resume_from,
        resume_missing_ok=True,
        quiet=not progress,
        log_every=log_every,
        max_to_keep=max_to_keep,
        tensorboard=tensorboard,
        wandb=wandb,
        mlflow=mlflow,
        stop_after=stop_after,
    )
    log_dir = log_dir if log_dir is not None else checkpoint_dir
    result = run(task, options, callback=callback, checkpoint_dir=checkpoint_dir, metrics_dir=log_dir)
    jax.block_until_ready(result.carry["state"])
    return TrainResult(
        state=result.carry["state"],
        fn_state=result.carry["fn_state"],
        generation=result.generation,
        interrupted=bool(result.interrupted),
        resumed_from=result.resumed_from,
        history=result.history,
        checkpoint_dir=None if checkpoint_dir is None else str(Path(checkpoint_dir).absolute()),
    )


def mean_of(es: Strategy, result: TrainResult) -> Any:
    """The final mean as NumPy arrays (works for multi-process runs too)."""
    return parallel.to_host(es.get_mean(result.state))
