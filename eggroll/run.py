"""A training loop the CLIs share: jitted generations, progress, logs, checkpoints, resume.

:func:`train` runs ``num_generations`` of ask / evaluate / tell with
:func:`eggroll.parallel.generation_step` (one device, or the population split
over ``mesh``), shows a rich progress bar, writes metrics with
:class:`eggroll.logging.MetricsLogger`, saves an orbax checkpoint every
``checkpoint_every`` generations and when SIGTERM / Ctrl-C arrives, and with
``resume=True`` continues from the newest checkpoint exactly (bit for bit) as
if it had never stopped.

Randomness: ``key`` is split once into the strategy's init key and a run key;
generation ``g`` is evaluated with ``fold_in(run_key, g)``. The checkpoint
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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax

from eggroll import parallel
from eggroll.types import Strategy

__all__ = ["TrainResult", "mean_of", "train"]


@functools.lru_cache(maxsize=8)
def _cached_step(es: Strategy, fitness_fn: Callable, mesh: Any, population_level: bool) -> Callable:
    return parallel.generation_step(es, fitness_fn, mesh=mesh, population_level=population_level)


def _step(es: Strategy, fitness_fn: Callable, mesh: Any, population_level: bool) -> Callable:
    """The jitted generation, reused across ``train`` calls on the same strategy (no recompilation on resume)."""
    try:
        return _cached_step(es, fitness_fn, mesh, population_level)
    except TypeError:  # unhashable params inside the strategy
        return parallel.generation_step(es, fitness_fn, mesh=mesh, population_level=population_level)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        state: the final strategy state (``es.get_mean(state)`` is the solution).
        fn_state: the fitness function's final state (``None`` if stateless).
        generation: completed generations.
        interrupted: stopped early by SIGTERM / Ctrl-C (a checkpoint was saved).
        resumed_from: the checkpoint step the run started from (``None`` if fresh).
        history: the logged rows (scalar metrics per logged generation).
        checkpoint_dir: where checkpoints went (``None`` if disabled).
    """

    state: Any
    fn_state: Any
    generation: int
    interrupted: bool = False
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_dir: str | None = None


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("[bold]gen"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=False,
    )
    prog.add_task("train", total=total, completed=start, info="")
    return prog


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
    log_dir: str | os.PathLike | None = None,
    log_every: int = 1,
    tensorboard: bool | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``es`` on ``fitness_fn`` for ``num_generations`` generations.

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
            that already holds checkpoints is an error (nothing is overwritten).
        log_dir: write ``metrics.jsonl`` / ``metrics.csv`` / TensorBoard here
            (default: ``checkpoint_dir``; ``None`` and no checkpoint dir: no files).
        log_every: log (and sync with the device) every this many generations.
        tensorboard: see :class:`eggroll.logging.MetricsLogger`.
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
    from eggroll.checkpoint import Checkpointer, GracefulInterrupt
    from eggroll.logging import MetricsLogger

    if not isinstance(num_generations, int) or num_generations < 0:
        raise ValueError(f"num_generations must be a non-negative int, got {num_generations!r}.")
    if log_every < 1:
        raise ValueError(f"log_every={log_every} must be >= 1.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where the run to continue saved its checkpoints).")
    params = es.default_params if params is None else params
    init_key, run_key = jax.random.split(key)

    init = es.init if mesh is None else parallel.sharded(es, mesh).init
    if mesh is not None:
        placed = parallel.replicate((init_key, mean, params, run_key, fn_state), mesh)
        init_key, mean, params, run_key, fn_state = placed
    state = init(init_key, mean, params)
    step = _step(es, fitness_fn, mesh, population_level)

    ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every) if checkpoint_dir is not None else None
    log_dir = log_dir if log_dir is not None else checkpoint_dir
    logger = MetricsLogger(log_dir, tensorboard=tensorboard) if log_dir is not None else None
    start, resumed_from = 0, None
    if ckpt is not None:
        ckpt.refuse_fresh_run(resume)
    if resume and ckpt.latest_step() is not None:
        items, meta = ckpt.restore({"state": state, "fn_state": fn_state, "run_key": run_key})
        state, fn_state, run_key = items["state"], items["fn_state"], items["run_key"]
        start = resumed_from = int(meta["generation"])
    if logger is not None:
        logger.truncate(start)

    def save(gen: int) -> None:
        if ckpt is not None:
            ckpt.save(gen, {"state": state, "fn_state": fn_state, "run_key": run_key}, {"generation": gen})

    history: list[dict[str, Any]] = []
    interrupted = False
    prog = _progress(progress and jax.process_index() == 0, num_generations, start)
    gen = start
    t_last, gen_last = time.perf_counter(), start
    try:
        if prog is not None:
            prog.start()
        with GracefulInterrupt() as stop:
            while gen < num_generations:
                state, fn_state, metrics = step(jax.random.fold_in(run_key, gen), state, params, fn_state)
                gen += 1
                if gen % log_every == 0 or gen == num_generations:
                    scalars = {k: v for k, v in metrics.items() if k not in ("best_solution",)}
                    scalars = parallel.to_host(scalars)
                    now = time.perf_counter()
                    dt = max(now - t_last, 1e-9)
                    scalars["generations_per_s"] = (gen - gen_last) / dt
                    scalars["evaluations_per_s"] = (gen - gen_last) * es.population_size / dt
                    scalars["wall_s"] = now
                    t_last, gen_last = now, gen
                    row = logger.log(gen - 1, scalars) if logger is not None else {"generation": gen - 1, **scalars}
                    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                    history.append(row)
                    if callback is not None:
                        callback(gen - 1, row)
                    if prog is not None:
                        prog.update(
                            prog.task_ids[0],
                            completed=gen,
                            info=f"best {row.get('best_fitness', float('nan')):.4g} "
                            f"mean {row.get('mean_fitness', float('nan')):.4g}",
                        )
                if ckpt is not None and ckpt.should_save(gen):
                    save(gen)
                if stop.requested is not None or (stop_after is not None and gen >= stop_after):
                    interrupted = gen < num_generations
                    break
        save(gen)
    finally:
        if prog is not None:
            prog.stop()
        if ckpt is not None:
            ckpt.close()
        if logger is not None:
            logger.close()
    jax.block_until_ready(state)
    return TrainResult(
        state=state,
        fn_state=fn_state,
        generation=gen,
        interrupted=interrupted,
        resumed_from=resumed_from,
        history=history,
        checkpoint_dir=None if ckpt is None else str(ckpt.directory),
    )


def mean_of(es: Strategy, result: TrainResult) -> Any:
    """The final mean as NumPy arrays (works for multi-process runs too)."""
    return parallel.to_host(es.get_mean(result.state))
