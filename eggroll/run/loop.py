"""The one run loop under every command and the Python API.

A command supplies a :class:`Task` (how to build its state, what one
generation does, what to evaluate, what to write at the end); :func:`run`
does everything else, once, for all of them:

- the generation loop, with an evaluation schedule (``eval_every`` and the
  last generation) and stop rules: ``generations``, a ``time_budget`` checked
  so the whole run ends within it (the next generation and evaluation are
  estimated from the ones before), and the task's own target
  (:meth:`Task.done`);
- orbax checkpoints (``<out>/checkpoints``) every ``checkpoint_every``
  generations (and where :meth:`Task.should_checkpoint` asks), when SIGTERM /
  Ctrl-C arrives (the current generation finishes first), when a generation
  fails with an exception (the last finished one is kept) and at the end;
  ``resume=True`` continues from the newest one so that the state, the
  history, the metrics, the best solution and every file in ``out`` equal
  those of a run that was never stopped (only wall-clock fields differ:
  :func:`is_wall_clock`);
- metrics (``<out>/metrics``: JSONL, CSV, TensorBoard), one progress display
  and one result record (``<out>/result.json``);
- the exit status a CLI returns (:attr:`RunResult.exit_code`: 0, 130 Ctrl-C, 143 SIGTERM).

Generations are numbered from 1 (``generation`` = generations completed);
an evaluation before the first generation is row 0. A task that works in
chunks (the demo, BBOB) counts chunks as its generations.

Example:
    >>> import jax.numpy as jnp
    >>> class Count(Task):
    ...     name = "count"
    ...     def init(self):
    ...         return {"x": jnp.zeros(())}
    ...     def step(self, carry, generation):
    ...         x = carry["x"] + 1
    ...         return {"x": x}, {"x": float(x)}
    >>> result = run(Count(), RunOptions(generations=3, quiet=True))
    >>> [row["x"] for row in result.history], result.stopped_by, result.exit_code
    ([1.0, 2.0, 3.0], 'generations', 0)
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from eggroll.run.checkpoint import Checkpointer, GracefulInterrupt, write_json

__all__ = [
    "GenerationFailed",
    "RunInterrupted",
    "RunOptions",
    "RunResult",
    "Task",
    "is_wall_clock",
    "run",
    "without_wall_clock",
    "write_json",
]

_WALL_CLOCK = frozenset({"seconds", "wall_s", "compile_seconds", "elapsed_s", "eval_seconds"})


def is_wall_clock(key: str) -> bool:
    """Whether a metric or record field is a wall-clock measurement (differs between otherwise equal runs)."""
    return key in _WALL_CLOCK or key.endswith("_per_s") or key.endswith("_seconds")


def without_wall_clock(value: Any) -> Any:
    """``value`` (JSON: dicts, lists, scalars) with every wall-clock field dropped, at any depth.

    Two runs of the same settings, one stopped and resumed, give equal records and rows after this.
    """
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if not is_wall_clock(k)}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


@dataclass(frozen=True)
class RunOptions:
    """What every command shares (the common CLI options).

    Attributes:
        out: the run's folder (``checkpoints/``, ``metrics/``, ``result.json``
            and the task's files); ``None`` writes nothing.
        generations: generations to run in total (a resumed run counts those done before); ``None``: the
            task's :attr:`Task.total` (at most that many in any case).
        checkpoint_every: save every this many generations (``None``: only on
            SIGTERM / Ctrl-C and at the end).
        checkpoints: keep checkpoints in ``<out>/checkpoints`` at all (``False``:
            a short job rerun into the same folder; SIGTERM still stops it cleanly).
        resume: continue from the newest checkpoint in ``out`` (none there: an
            error naming the folder, unless ``resume_missing_ok``).
        resume_from: with ``resume``, continue from this checkpoint step instead of the newest (e.g. the
            newest one that verifies when a newer one is damaged); the newer steps are set aside
            (``<checkpoints>.set-aside/``) so the run can save those generations anew.
        resume_missing_ok: with ``resume``, start fresh when there is no
            checkpoint yet (jobs that always pass ``--resume``, e.g. on preemptible machines).
        time_budget: seconds; the loop stops early enough that the run (its
            last generation and evaluation included) ends within them.
        eval_every: evaluate every this many generations (and after the last);
            ``None``: only after the last (tasks without an evaluation ignore it).
        quiet: no progress display.
        log_every: log a row (and wait for the device) every this many
            generations and after the last; rows in between are not kept.
        max_to_keep: checkpoints kept on disk.
        tensorboard: see :class:`eggroll.run.logging.MetricsLogger`.
        wandb: log the rows to Weights & Biases too (``True`` or ``wandb.init``
            keyword arguments; see :class:`eggroll.run.logging.MetricsLogger`).
        mlflow: log the rows to MLflow too (``True`` or ``{"tracking_uri": ...,
            "experiment_name": ..., "run_name": ..., "tags": ...}``).
        stop_after: stop as if interrupted once this many generations are done
            (tests and time-boxed jobs; a resume continues).
        started: the ``time.perf_counter()`` reading ``time_budget`` counts from
            (default: when :func:`run` starts; the CLI passes its process's start,
            so the whole command, imports and model loading included, fits the budget).
        end_reserve: with ``time_budget``, seconds kept free after the last generation for what the
            loop cannot time in advance: the task's files (plots, exports) and the process's exit
            (the CLI keeps 2 s).
    """

    out: str | Path | None = None
    generations: int | None = 100
    checkpoint_every: int | None = None
    checkpoints: bool = True
    resume: bool = False
    resume_from: int | None = None
    resume_missing_ok: bool = False
    time_budget: float | None = None
    eval_every: int | None = None
    quiet: bool = False
    log_every: int = 1
    max_to_keep: int = 2
    tensorboard: bool | None = None
    wandb: bool | Mapping[str, Any] | None = None
    mlflow: bool | Mapping[str, Any] | None = None
    stop_after: int | None = None
    started: float | None = None
    end_reserve: float = 0.0

    def validate(self) -> RunOptions:
        """Raise ``ValueError`` naming the option that is wrong and what to pass instead."""
        if self.resume_from is not None and not self.resume:
            raise ValueError("--resume-from continues a run: give --resume too")
        for name in ("generations", "checkpoint_every", "eval_every", "stop_after", "log_every", "resume_from"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"--time-budget must be a positive number of seconds, got {self.time_budget!r}")
        if not (math.isfinite(self.end_reserve) and self.end_reserve >= 0):
            raise ValueError(f"end_reserve must be a number of seconds >= 0, got {self.end_reserve!r}")
        if self.max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {self.max_to_keep}")
        return self


class Task:
    """What a command supplies to :func:`run`; override the hooks it needs.

    The carry is a pytree of arrays holding everything a resume needs
    (strategy state, fitness state, keys, the best solution so far); it is
    saved in every checkpoint. Host-side data that must survive a resume
    goes through :meth:`save_extra` / :meth:`load_extra` (JSON).

    Attributes:
        name: the command (``"rl"``); written to ``result.json``.
        label: the progress display's label (default ``name``).
        columns: the CSV columns, in order (default: the first row's keys); the
            loop's ``seconds``, ``generations_per_s`` and ``evaluations_per_s`` follow.
        may_change: the options a resume may change, for the refusal message.
        population_size: members evaluated per generation (``None``: no
            ``evaluations_per_s`` metric).
        total: the task's whole length in generations when it has one (the demo's and
            BBOB's chunks): the default and the most a run goes to.
        unit: what one of the loop's generations is, in the command's closing lines (``"chunk"``
            for the demo and BBOB).
    """

    population_size: int | None = None
    total: int | None = None
    name: str = "run"
    unit: str = "generation"
    label: str = ""
    columns: tuple[str, ...] | None = None
    may_change: str = "--generations, --time-budget, --eval-every, --checkpoint-every and --quiet"

    def settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (JSON)."""
        return {}

    def init(self) -> Any:
        """The initial carry (also the template a checkpoint is restored into)."""
        raise NotImplementedError

    def step(self, carry: Any, generation: int) -> tuple[Any, dict[str, Any]]:
        """Run generation ``generation`` (1-based); return the new carry and its metrics (host scalars)."""
        raise NotImplementedError

    def evaluate(self, carry: Any, generation: int) -> tuple[Any, dict[str, Any]] | None:
        """Evaluate after ``generation`` (0: before the first); ``None`` if the task has no evaluation."""
        return None

    def done(self, row: Mapping[str, Any]) -> bool:
        """Whether the run has reached its target (checked after every generation and evaluation)."""
        return False

    def should_checkpoint(self, generation: int) -> bool:
        """Save after ``generation`` besides the ``checkpoint_every`` schedule (e.g. when a sub-run ends)."""
        return False

    def describe(self, row: Mapping[str, Any]) -> str:
        """The progress display's status text for a row."""
        keys = [k for k in row if k != "generation" and not is_wall_clock(k)][:3]
        return "  ".join(f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}" for k in keys)

    def save_extra(self) -> dict[str, Any]:
        """Host-side JSON the checkpoint keeps besides the carry."""
        return {}

    def load_extra(self, extra: Mapping[str, Any]) -> None:
        """Take back what :meth:`save_extra` returned (on resume)."""

    def finish(self, carry: Any, result: RunResult) -> dict[str, Any]:
        """Write the task's files into ``result.out`` (process 0 only); return what ``result.json`` records.

        Returns:
            JSON: e.g. ``{"files": {...}, "best_eval_return": ...}``.
        """
        return {}


@dataclass
class RunResult:
    """What :func:`run` returns.

    Attributes:
        carry: the final carry.
        generation: generations completed (those before a resume included).
        history: one row per generation (and row 0 for an initial evaluation).
        stopped_by: ``"generations"``, ``"time_budget"``, ``"target"``,
            ``"stop_after"``, ``"SIGTERM"`` or ``"SIGINT"``.
        resumed_from: the generation of the checkpoint the run continued from.
        out: the run's folder.
        record: what was written to ``result.json``.
        checkpoint_dir: where the checkpoints are (``None``: none).
        unit: the task's :attr:`Task.unit`.
        began: ``False`` when a Ctrl-C before the loop (:func:`eggroll.run.checkpoint.interrupt_early`) stopped
            the run before anything ran: nothing was saved or written.
        note: a line for the user about how the run ended (e.g. a time budget spent by the start-up), or ``""``.
    """

    carry: Any
    generation: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = "generations"
    resumed_from: int | None = None
    out: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)
    checkpoint_dir: str | None = None
    unit: str = "generation"
    began: bool = True
    note: str = ""

    @property
    def interrupted(self) -> str:
        """The signal that stopped the run (``"SIGTERM"``, ``"SIGINT"``; ``"stop_after"`` too), else ``""``."""
        return self.stopped_by if self.stopped_by in ("SIGTERM", "SIGINT", "stop_after") else ""

    @property
    def exit_code(self) -> int:
        """What a command exits with: 130 after Ctrl-C, 143 after SIGTERM, else 0."""
        return {"SIGINT": 130, "SIGTERM": 143}.get(self.stopped_by, 0)


class RunInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped a run of a Python API that raises for it, after a finished generation.

    Args:
        result: the loop's :class:`RunResult`.
        attributes: more attributes for the caller (e.g. ``state``, ``history``).

    Attributes:
        result: the loop's :class:`RunResult`.
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        generation: the last finished (and saved) generation.
        checkpoint_dir: where the checkpoint is (``None``: the run kept none).
        exit_code: the shell convention: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
    """

    def __init__(self, result: RunResult, **attributes: Any):
        self.result, self.signal_name, self.generation = result, result.stopped_by, result.generation
        self.checkpoint_dir, self.exit_code = result.checkpoint_dir, result.exit_code
        self.__dict__.update(attributes)
        saved = (
            f"checkpoint saved in {self.checkpoint_dir}. Continue with resume=True (on the command line: the same "
            "command plus --resume)."
            if self.checkpoint_dir
            else "nothing was saved (the run kept no checkpoints)."
        )
        super().__init__(f"stopped by {self.signal_name} after generation {self.generation}; {saved}")


class GenerationFailed(RuntimeError):
    """A generation raised (e.g. a language model became unreachable) in a run that keeps checkpoints.

    The loop saves the last finished generation before this leaves it (a resumed
    run's first one is its checkpoint), so a resumed run loses nothing.
    ``__cause__`` is the original error.

    Args:
        generation: the generation that failed.
        saved_generation: the newest generation on disk (``None``: none).
        checkpoint_dir: where the checkpoints are (named in the message).
        error: the original error.

    Attributes:
        generation, saved_generation: as given.
        cause: the original error in one line (a host callback's error arrives as its traceback text, which
            ends with ``Type: message``).
    """

    def __init__(self, generation: int, saved_generation: int | None, checkpoint_dir: str, error: BaseException):
        text = str(error)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        cause = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        if "Traceback (most recent call last)" in text:  # an XLA-wrapped host callback error: its last line
            cause = lines[-1]
        self.generation, self.saved_generation, self.cause = generation, saved_generation, cause.rstrip(". ")
        saved = (
            f"Generation {saved_generation} is saved in {checkpoint_dir}; once the cause is fixed, continue with "
            "resume=True (on the command line: the same command plus --resume)"
            if saved_generation
            else "No generation is saved, so there is nothing to resume; start again once the cause is fixed"
        )
        end = "" if self.cause.endswith("?") else "."
        super().__init__(f"generation {generation} failed: {self.cause}{end} {saved}.")


def _within(out: Path, path: str | Path) -> str:
    """``path`` relative to ``out`` when it lies inside it (however either is spelled), else as given."""
    path = Path(path)
    for inner, outer in ((path, out), (path.absolute(), out.absolute())):
        if inner.is_relative_to(outer):
            return str(inner.relative_to(outer))
    return str(path)


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    from eggroll.parallel import to_host

    out = {}
    for k, v in to_host(dict(row)).items():
        if math.prod(getattr(v, "shape", ())) > 1:  # arrays (e.g. evosax's ``mean``) are not metrics rows' values
            continue
        v = v.item() if hasattr(v, "item") else v
        out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def _same_on_every_process(settings: Mapping[str, Any]) -> None:
    """Refuse processes started with different settings: each would run its own run, silently wrong (another
    seed), or fail in a collective or hang (another population or --out)."""
    from jax.experimental import multihost_utils

    def code(value: Any) -> int:
        return zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode()) & 0x7FFFFFFF

    keys = sorted(settings)
    whole = multihost_utils.process_allgather(np.array([code(keys), code(settings)], np.int32))
    if (whole == whole[0]).all():
        return
    differ = "another command or eggroll version"
    if (whole[:, 0] == whole[0, 0]).all():  # the same keys: name the values that differ
        each = multihost_utils.process_allgather(np.array([code(settings[k]) for k in keys], np.int32))
        differ = ", ".join(k for j, k in enumerate(keys) if not (each[:, j] == each[0, j]).all())
    others = [i for i in range(len(whole)) if not (whole[i] == whole[0]).all()]
    raise ValueError(
        f"process(es) {', '.join(map(str, others))} were started with other settings than process 0 ({differ}); "
        "start every process with the same command, only --process-id differs"
    )


def _refuse_other_rows(metrics_dir: Path) -> None:
    """A fresh run would truncate ``metrics_dir``'s rows: refuse when they are another run's."""
    from eggroll.run.logging import read_jsonl

    jsonl = metrics_dir / "metrics.jsonl"
    rows = len(read_jsonl(jsonl)) if jsonl.is_file() else 0
    if rows:
        raise ValueError(
            f"{metrics_dir} already holds the metrics of another run ({rows} rows in metrics.jsonl), which a fresh "
            "run would delete: choose another metrics folder (log_dir=), move those files away, or continue that "
            "run with resume=True and its checkpoint folder"
        )


_REASONS = ("", "generations", "stop_after", "target", "time_budget", "SIGINT", "SIGTERM")


def run(
    task: Task,
    options: RunOptions,
    *,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    metrics_dir: str | Path | None = None,
) -> RunResult:
    """Run ``task`` under ``options``: the loop every command shares.

    Args:
        task: the command's hooks.
        options: generations, folder, checkpoints, budget, evaluation schedule.
        callback: ``callback(generation, row)`` after each row is logged.
        checkpoint_dir: checkpoints go here instead of ``<out>/checkpoints``.
        metrics_dir: metrics go here instead of ``<out>/metrics``.

    Returns:
        A :class:`RunResult` (``exit_code`` says what a command should exit with).

    Raises:
        ValueError: bad options, a folder that another live run holds (its lock
            file, :mod:`eggroll.run.lock`), a fresh run into a folder that holds a
            run, or a resume with other settings (each difference named).
        eggroll.run.checkpoint.CheckpointError: no usable checkpoint to resume from.
        GenerationFailed: a generation raised in a run that keeps checkpoints (the last finished one is saved).
    """
    from eggroll.run.lock import RunLock
    from eggroll.run.logging import MetricsLogger
    from eggroll.run.progress import ProgressBar, console

    options.validate()
    with contextlib.ExitStack() as stack:
        # one run per folder: the run's --out, or (from Python) the checkpoint and metrics folders it was given
        held = [options.out] if options.out is not None else [p for p in (checkpoint_dir, metrics_dir) if p]
        for folder in dict.fromkeys(Path(p).absolute() for p in held) if jax.process_index() == 0 else ():
            lock = stack.enter_context(RunLock(folder, task.name))
            if lock.stale_note:
                console.print(f"[yellow]note:[/] {lock.stale_note}")
        t_start = time.perf_counter() if options.started is None else options.started
        generations = min(options.generations or task.total or 0, task.total or options.generations or 0)
        if generations < 1:
            raise ValueError(f"generations=None needs a task with a total length ({type(task).__name__}.total)")
        out = Path(options.out) if options.out is not None else None
        main = jax.process_index() == 0
        settings = task.settings()
        if jax.process_count() > 1:
            _same_on_every_process({**settings, "--out": None if out is None else str(out)})
        if checkpoint_dir is None and out is not None and options.checkpoints:
            checkpoint_dir = out / "checkpoints"
        own_metrics_dir = metrics_dir is not None  # given apart from --out: it may hold another run's rows
        metrics_dir = metrics_dir if metrics_dir is not None else None if out is None else out / "metrics"
        if options.resume and checkpoint_dir is None:
            raise ValueError("resuming needs the run's folder (--out; in Python out= or checkpoint_dir=)")
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = Checkpointer(checkpoint_dir, every=options.checkpoint_every, max_to_keep=options.max_to_keep)
            ckpt.refuse_fresh_run(options.resume, f"`eggroll {task.name}`")
        carry = task.init()
        history: list[dict[str, Any]] = []
        start, resumed_from = 0, None
        if options.resume and (ckpt.latest_step() is not None or not options.resume_missing_ok):
            step = options.resume_from
            ckpt.check_settings(ckpt.read_meta(step).get("settings"), settings, may_change=task.may_change)
            items, meta = ckpt.restore({"carry": carry}, step=step)
            if step is not None:
                ckpt.set_aside(step)
            carry, history = items["carry"], [dict(r) for r in meta.get("history", [])]
            task.load_extra(meta.get("extra", {}))
            start = resumed_from = int(meta["generation"])

        def save(gen: int) -> None:
            if ckpt is not None:
                meta = {"generation": gen, "settings": settings, "history": history, "extra": task.save_extra()}
                ckpt.save(gen, {"carry": carry}, meta)

        logger = None
        if metrics_dir is not None:
            columns = None
            if task.columns:  # the loop's own columns follow the task's
                extra = ["seconds", "generations_per_s"] + (["evaluations_per_s"] if task.population_size else [])
                columns = [*task.columns, *(c for c in extra if c not in task.columns)]
            if own_metrics_dir and resumed_from is None and main:
                _refuse_other_rows(Path(metrics_dir))
            logger = MetricsLogger(
                metrics_dir,
                tensorboard=options.tensorboard,
                columns=columns,
                wandb=options.wandb,
                mlflow=options.mlflow,
                config={"eggroll_task": task.name, **settings},
            )
            logger.truncate(start + 1 if resumed_from is not None else 0)
        for opened in (ckpt, logger):  # from here on closed however the run ends: the metrics first
            if opened is not None:
                stack.push(opened)

        last_logged = [start, time.perf_counter()]

        def record(row: dict[str, Any]) -> None:
            if row["generation"] > 0:
                now = time.perf_counter()
                rate = (row["generation"] - last_logged[0]) / max(now - last_logged[1], 1e-9)
                last_logged[:] = [row["generation"], now]
                row["generations_per_s"] = rate
                if task.population_size:
                    row["evaluations_per_s"] = rate * task.population_size
            row = _clean(row)
            history.append(row)
            if logger is not None:
                logger.log(row["generation"], {k: v for k, v in row.items() if v is not None})
            bar.update(row["generation"], task.describe(row))
            if callback is not None:
                try:
                    callback(row["generation"], row)
                except Exception as err:  # the generation itself finished: keep it, as for a failed generation
                    if ckpt is not None and row["generation"] > start:
                        save(row["generation"])
                        err.add_note(
                            f"eggroll: generation {row['generation']} finished before the callback raised; it is "
                            f"saved in {ckpt.directory} (resume=True continues from it)"
                        )
                    raise

        gen, stopped_by = start, ""
        step_times: list[float] = []
        eval_times: list[float] = []

        def evaluate(row: dict[str, Any]) -> None:
            nonlocal carry
            t0 = time.perf_counter()
            got = task.evaluate(carry, row["generation"])
            if got is not None:
                carry, metrics = got
                row.update(metrics)
                eval_times.append(time.perf_counter() - t0)

        def over_budget() -> bool:
            if options.time_budget is None:
                return False
            typical = statistics.median(step_times[1:] or step_times)
            next_eval = max(eval_times) if eval_times else 0.0
            return time.perf_counter() - t_start + typical + next_eval + options.end_reserve > options.time_budget

        def agree(reason: str, generation: int) -> str:
            """The stop reason every process adopts: the strongest any of them has (a collective over processes)."""
            if jax.process_count() == 1:
                return reason
            from jax.experimental import multihost_utils

            try:
                codes = multihost_utils.process_allgather(np.int32(_REASONS.index(reason)))
            except Exception as err:  # the collective failed: another process is gone
                saved = None if ckpt is None else ckpt.latest_step()
                raise GenerationFailed(generation, saved, "" if ckpt is None else str(ckpt.directory), err) from err
            return _REASONS[int(np.max(codes))]

        progress = ProgressBar(task.label or task.name, generations, start, enabled=main and not options.quiet)
        with progress as bar, GracefulInterrupt() as signals:
            # Ctrl-C before the loop began (eggroll.run.checkpoint.interrupt_early): stop before anything runs.
            # (Several processes: they agree after the initial evaluation or the first generation, as always.)
            before = signals.requested is not None and jax.process_count() == 1
            if before:
                stopped_by = signals.signal_name
            elif resumed_from is None:
                row0 = {"generation": 0}
                evaluate(row0)
                if len(row0) > 1:
                    record(row0)
                if signals.requested is not None:  # stopped during the initial evaluation: resume skips it
                    stopped_by = signals.signal_name
                stopped_by = agree(stopped_by, 0)
            if not stopped_by and options.stop_after is not None and gen >= options.stop_after:
                stopped_by = "stop_after"  # resumed at (or past) it: a restarted time-boxed job does not grow
            while gen < generations and not stopped_by:
                t0 = time.perf_counter()
                try:
                    carry, metrics = task.step(carry, gen + 1)
                except Exception as err:
                    if ckpt is None:
                        raise
                    if gen > start:  # keep the last finished generation: --resume continues from it
                        save(gen)
                    raise GenerationFailed(gen + 1, gen or None, str(ckpt.directory), err) from err
                gen += 1
                step_times.append(time.perf_counter() - t0)
                row = {"generation": gen, **metrics, "seconds": step_times[-1]}
                if signals.requested is not None:
                    stopped_by = signals.signal_name
                elif gen >= generations:
                    stopped_by = "generations"
                elif options.stop_after is not None and gen >= options.stop_after:
                    stopped_by = "stop_after"
                elif over_budget():
                    stopped_by = "time_budget"
                # several processes: every one stops at the same generation, for any one's reason
                stopped_by = agree(stopped_by, gen)
                last = stopped_by in ("generations", "time_budget")
                scheduled = options.eval_every is not None and gen % options.eval_every == 0
                if scheduled or last:
                    evaluate(row)
                if not stopped_by and task.done(row):
                    stopped_by = "target"
                    if not scheduled:
                        evaluate(row)
                # no extra row at a stop by a signal or stop_after: the resumed run logs what an uninterrupted one does
                if stopped_by in ("generations", "time_budget", "target") or scheduled or gen % options.log_every == 0:
                    record(row)
                if not stopped_by and ckpt is not None and (ckpt.should_save(gen) or task.should_checkpoint(gen)):
                    save(gen)
                if signals.requested is not None and not stopped_by and jax.process_count() == 1:
                    stopped_by = signals.signal_name  # (several processes: the next generation agrees on it)
        if not before:
            save(gen)
        saved = ckpt is not None and not (before and ckpt.latest_step() is None)  # (a fresh run stopped before)
        result = RunResult(carry, gen, history, stopped_by or "generations", resumed_from, out, unit=task.unit)
        result.checkpoint_dir, result.began = str(ckpt.directory) if saved else None, not before
        if result.stopped_by == "time_budget" and gen == start + 1:
            result.note = (
                f"the {options.time_budget:g} s time budget was spent before a second {task.unit} could run "
                f"({time.perf_counter() - t_start:.1f} s so far: imports, loading, compiling and the first "
                f"{task.unit}); a run does at least one"
            )
        if out is not None and main and not before:
            extra = task.finish(carry, result)
            if isinstance(extra.get("files"), Mapping):  # recorded relative to the run's folder, as it moves with it
                extra = {**extra, "files": {k: _within(out, v) for k, v in extra["files"].items()}}
            result.record = {
                "command": task.name,
                "settings": settings,
                "generation": gen,
                "generations": generations,
                "stopped_by": result.stopped_by,
                "final": {k: v for k, v in (history[-1] if history else {}).items() if not is_wall_clock(k)},
                **extra,
                "seconds": time.perf_counter() - t_start,
            }
            write_json(out / "result.json", result.record)
        return result
