"""``eggroll lm`` as a task of the one run loop: the integer EGG language model trained by integer EGGROLL.

:class:`LMTrainTask` plugs :mod:`eggroll.problems.text` (corpus, model,
strategy, the jitted step and validation) into :func:`eggroll.run.loop.run`,
which owns the generation loop, the checkpoints (``<out>/checkpoints``), the
metrics (``<out>/metrics``), the progress display and ``<out>/result.json``.
One generation is one chunk of every training stream; the evaluation is the
mean model's bits/byte on the validation split (``eval_every`` and the last
generation); :meth:`LMTrainTask.finish` writes ``<out>/learning_curve.png``.

The carry (:class:`eggroll.problems.text.Carry`: the ``int8`` mean, the noise
table and counters, every member's hidden state, the generation) is the whole
state, so a resumed run equals an uninterrupted one bit for bit, on any number
of devices. :func:`train_lm` is the same task as a Python call;
:func:`load_checkpoint` reads a run back (for ``eggroll lm sample``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

from eggroll.problems import text
from eggroll.run.loop import RunOptions, RunResult, Task, run

__all__ = [
    "CHECKPOINT_FORMAT",
    "LMTrainTask",
    "build_task",
    "command_config",
    "load_checkpoint",
    "read_run_meta",
    "restore_run",
    "resume_config",
    "train_lm",
]

CHECKPOINT_FORMAT = "eggroll.lm/2"
"""``extra["format"]`` of the checkpoints written through the run loop (``<out>/checkpoints``)."""
OLD_FORMAT = "eggroll.checkpoint/lm-1"
"""``meta["format"]`` of the checkpoints of the previous ``eggroll lm`` (steps directly in ``--ckpt-dir``)."""

# LMConfig fields a resumed run takes from its checkpoint; one given on the command line must agree.
_RUN_SETTINGS = (
    "width", "depth", "mlp_ratio", "population", "rank", "sigma_shift", "chunk", "group_pairs",
    "alpha_start", "alpha_end", "seed",
)  # fmt: skip


def _error(message: str) -> Exception:
    from eggroll.run.checkpoint import CheckpointError

    return CheckpointError(message)


# --------------------------------------------------------------------------- the task


def corpus_record(path: str | Path | None, data: bytes) -> dict[str, Any]:
    """What identifies a corpus: its path, size and SHA-256."""
    return {
        "path": None if path is None else str(Path(path).resolve()),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def baselines(train, valid) -> dict[str, float]:
    """The unigram and bigram bits/byte of both splits (counts from ``train``)."""
    return {
        "unigram_train": text.unigram_bits(train, train),
        "unigram_valid": text.unigram_bits(train, valid),
        "bigram_train": text.bigram_bits(train, train),
        "bigram_valid": text.bigram_bits(train, valid),
    }


class LMTrainTask(Task):
    """Integer EGGROLL on a text task (:func:`eggroll.problems.text.make_task`) as a run-loop task.

    Args:
        problem: the compiled pieces (:class:`eggroll.problems.text.LMTask`).
        corpus: :func:`corpus_record` of the corpus (part of the settings a resume must share).
        baselines: :func:`baselines` (shown, plotted and recorded).
        carry: start from this carry instead of ``problem.init()`` (its
            ``generation`` is then the first batch's position: ``offset``).
        validate_first: evaluate the starting point (row 0).
        stop: polled after every generation; ``True`` ends the run there (scored on the validation split).
        sample_length: bytes sampled from the final model into ``result.json`` (0: none).
        plot: the learning curve's path (default ``<out>/learning_curve.png``).
        verbose: print the baselines, the model and the final summary.
    """

    name = "lm"
    label = "lm"
    columns = (
        "train_bpb", "valid_bpb", "num_moved", "tokens_per_s", "seconds", "generations_per_s", "evaluations_per_s",
        "elapsed_s",
    )  # fmt: skip
    may_change = (
        "--generations (it also stretches the threshold schedule), --devices, --time-budget, --eval-every, "
        "--checkpoint-every and --quiet"
    )

    def __init__(
        self,
        problem: text.LMTask,
        *,
        corpus: Mapping[str, Any] | None = None,
        baselines: Mapping[str, float] | None = None,
        carry: text.Carry | None = None,
        validate_first: bool = True,
        stop: Callable[[], bool] | None = None,
        sample_length: int = 0,
        plot: str | Path | None = None,
        verbose: bool = False,
    ):
        self.problem, self.config = problem, problem.config
        self.population_size = self.config.population
        self.corpus = dict(corpus or {"path": None, "bytes": None, "sha256": None})
        self.baselines = dict(baselines or {})
        self._start = carry
        self.offset = 0 if carry is None else int(carry.generation)
        self.validate_first, self._stop = validate_first, stop
        self.sample_length, self.plot, self.verbose = sample_length, plot, verbose
        self._elapsed0, self._t0, self._generation = 0.0, time.perf_counter(), self.offset
        self._shown: dict[str, float] = {}
        self._announced = False

    # ------------------------------------------------------------------ hooks
    def settings(self) -> dict[str, Any]:
        config = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "generations"}
        return {**config, "corpus_sha256": self.corpus["sha256"], "corpus_bytes": self.corpus["bytes"]}

    def init(self) -> text.Carry:
        self._t0 = time.perf_counter()
        if self.verbose and not self._announced:
            self._announced = True
            self._announce()
        return self.problem.init() if self._start is None else self._start

    def step(self, carry: text.Carry, generation: int) -> tuple[text.Carry, dict[str, Any]]:
        p = self.problem
        self._generation = self.offset + generation
        inputs, targets, reset = p.batch(self._generation - 1)
        t0 = time.perf_counter()
        carry, metrics = p.step(carry, p.put(inputs), p.put(targets), p.put(reset))
        train_bpb = float(metrics["mean_fitness"])  # waits for the device
        dt = time.perf_counter() - t0
        return carry, {
            "train_bpb": train_bpb,
            "num_moved": int(metrics["num_moved"]),
            "tokens_per_s": self.config.population * self.config.chunk / dt,
            "elapsed_s": self._elapsed(),
        }

    def evaluate(self, carry: text.Carry, generation: int) -> tuple[text.Carry, dict[str, Any]] | None:
        if generation == 0 and not self.validate_first:
            return None
        return carry, {"valid_bpb": float(self.problem.validate(carry.es_state.mean)), "elapsed_s": self._elapsed()}

    def done(self, row: Mapping[str, Any]) -> bool:
        return self._stop is not None and bool(self._stop())

    def describe(self, row: Mapping[str, Any]) -> str:
        self._shown.update({k: row[k] for k in ("train_bpb", "valid_bpb", "tokens_per_s") if row.get(k) is not None})
        nan = float("nan")
        s = self._shown
        return (
            f"train {s.get('train_bpb', nan):.3f}  valid {s.get('valid_bpb', nan):.3f} bits/byte  "
            f"{s.get('tokens_per_s', 0.0):,.0f} tok/s"
        )

    def save_extra(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "generation": self._generation,
            "generations": self.config.generations,
            "corpus_path": self.corpus["path"],
            "baselines": self.baselines,
            "elapsed_s": self._elapsed(),
        }

    def load_extra(self, extra: Mapping[str, Any]) -> None:
        self._elapsed0 = float(extra.get("elapsed_s", 0.0))
        self._generation = int(extra.get("generation", 0))
        if self.verbose:
            from eggroll.run.progress import console

            console.print(
                f"[bold]resuming[/] at generation {self._generation} (settings and corpus from the checkpoint)"
            )

    def finish(self, carry: text.Carry, result: RunResult) -> dict[str, Any]:
        from eggroll.models import egg

        out = Path(result.out)
        plot = Path(self.plot) if self.plot is not None else out / "learning_curve.png"
        c = self.config
        title = f"EGG {c.depth}x{c.width}, N={c.population}"
        text.plot_learning_curve(result.history, self.baselines, plot, title=title)
        valid = [r["valid_bpb"] for r in result.history if r.get("valid_bpb") is not None] or [float("nan")]
        record: dict[str, Any] = {
            "files": {"plot": str(plot.relative_to(out)) if plot.is_relative_to(out) else str(plot)},
            "valid_bpb": valid[-1],
            "valid_bpb_start": valid[0],
            "baselines": self.baselines,
            "corpus": self.corpus,
            "params": egg.num_params(carry.es_state.mean),
        }
        if self.sample_length > 0 and result.stopped_by not in ("SIGTERM", "SIGINT"):
            got = egg.generate(carry.es_state.mean, b"The ", self.sample_length, jax.random.key(c.seed), 0.8)
            record["sample"] = "The " + got.decode("utf-8", errors="replace")
        if self.verbose:
            from eggroll.run.progress import console

            console.print(
                f"[bold green]done[/] generation {result.generation}: valid {valid[-1]:.3f} bits/byte (start "
                f"{valid[0]:.3f}; unigram {self.baselines.get('unigram_valid', float('nan')):.3f}, bigram "
                f"{self.baselines.get('bigram_valid', float('nan')):.3f})"
            )
            if "sample" in record:
                console.print("[bold]sample:[/]")
                console.print(record["sample"], markup=False, highlight=False)
        return record

    # ------------------------------------------------------------------ helpers
    def _elapsed(self) -> float:
        return self._elapsed0 + time.perf_counter() - self._t0

    def _announce(self) -> None:
        from rich.table import Table

        from eggroll.models import egg
        from eggroll.run.progress import console

        b, c, p = self.baselines, self.config, self.problem
        if b and self.corpus["bytes"]:
            n_train = int(round(self.corpus["bytes"] * (1 - c.valid_fraction)))  # as text.split_bytes
            n_valid = self.corpus["bytes"] - n_train
            table = Table(title=f"baselines, bits/byte ({n_train:,} train / {n_valid:,} valid bytes)")
            for name, justify in (("model", "left"), ("train", "right"), ("valid", "right")):
                table.add_column(name, justify=justify)
            table.add_row("uniform", "8.000", "8.000")
            for name in ("unigram", "bigram"):
                table.add_row(name, f"{b[name + '_train']:.3f}", f"{b[name + '_valid']:.3f}")
            console.print(table)
        n_params = egg.num_params(jax.eval_shape(lambda: egg.init(jax.random.key(0), c.model)))
        n_dev = 1 if p.mesh is None else p.mesh.devices.size
        console.print(
            f"EGG {c.depth}x{c.width} ({n_params:,} int8 params), population {c.population}, rank {c.rank}, "
            f"sigma 2^-{c.sigma_shift}, chunk {c.chunk}, {n_dev} device{'s' if n_dev > 1 else ''}; compiling..."
        )


def build_task(
    config: text.LMConfig,
    *,
    corpus: str | Path | None = None,
    mesh: Any = None,
    expect_corpus: Mapping[str, Any] | None = None,
    sample_length: int = 0,
    plot: str | Path | None = None,
    verbose: bool = True,
) -> LMTrainTask:
    """Read the corpus, split it, compute the baselines and build the task (what ``eggroll lm`` runs).

    Args:
        config: the run's settings.
        corpus: a text file (``None``: :func:`eggroll.problems.text.default_corpus`).
        mesh: split the population over this device mesh (``None``: one device).
        expect_corpus: the :func:`corpus_record` a resumed run was trained on (its SHA-256 must match).
        sample_length, plot, verbose: see :class:`LMTrainTask`.

    Raises:
        FileNotFoundError, ValueError: a missing or short corpus, another corpus
            than ``expect_corpus``, bad settings, or a population that does not split over the devices.
    """
    data = text.load_corpus(corpus)
    record = corpus_record(corpus, data)
    if expect_corpus is not None and expect_corpus.get("sha256") != record["sha256"]:
        raise ValueError(
            f"cannot resume: the run was trained on another corpus ({expect_corpus.get('path') or 'the default'}, "
            f"{expect_corpus.get('bytes') or 0:,} bytes) than {corpus or 'the default'} ({len(data):,} bytes); "
            "resume with the same --corpus."
        )
    config.validate()
    train, valid = text.split_bytes(data, config.valid_fraction)
    problem = text.make_task(config, train, valid, mesh=mesh)
    return LMTrainTask(
        problem, corpus=record, baselines=baselines(train, valid), sample_length=sample_length, plot=plot,
        verbose=verbose,
    )  # fmt: skip


def train_lm(
    task: text.LMTask,
    carry: text.Carry | None = None,
    *,
    generations: int | None = None,
    time_budget: float | None = None,
    valid_every: int = 25,
    callback: Callable[[dict], None] | None = None,
    validate_first: bool = True,
    stop: Callable[[], bool] | None = None,
) -> tuple[text.Carry, list[dict]]:
    """Run integer EGGROLL on a text task (the run loop, without files).

    Args:
        task: from :func:`eggroll.problems.text.make_task`.
        carry: where to continue from (e.g. a restored checkpoint); ``None`` starts fresh.
        generations: stop after this generation number (default ``task.config.generations``).
        time_budget: seconds; stop early enough that the call (compile and the last validation included)
            ends within them.
        valid_every: score the mean on the validation split every this many generations of this call
            (and at the first and the last).
        callback: called with every log record (a dict with ``generation``, ``train_bpb``,
            ``tokens_per_s``, ``num_moved``, ``elapsed`` and, when scored, ``valid_bpb``).
        validate_first: also score (and record) the starting point.
        stop: polled after every generation; ``True`` ends the run there (e.g. a
            SIGTERM flag). The last generation is then also scored on the validation split.

    Returns:
        ``(carry, history)``: the final carry and the list of log records.
    """
    if valid_every < 1:
        raise ValueError(f"valid_every must be >= 1, got {valid_every}.")
    lm = LMTrainTask(task, carry=carry, validate_first=validate_first, stop=stop)
    end = task.config.generations if generations is None else generations
    if end <= lm.offset:
        return (task.init() if carry is None else carry), []

    def record(row: Mapping[str, Any]) -> dict:
        out = {**row, "generation": row["generation"] + lm.offset}
        out["elapsed"] = out.get("elapsed_s", 0.0)
        return out

    on_row = None if callback is None else (lambda _generation, row: callback(record(row)))
    options = RunOptions(generations=end - lm.offset, time_budget=time_budget, eval_every=valid_every, quiet=True)
    result = run(lm, options, callback=on_row)
    return result.carry, [record(r) for r in result.history]


# --------------------------------------------------------------------------- reading a run back


def _carry_tree(carry: text.Carry) -> dict[str, Any]:
    """The item tree of an ``eggroll.checkpoint/lm-1`` checkpoint (and what :func:`load_checkpoint` returns)."""
    es = carry.es_state
    return {
        "params": es.mean,
        "es": {"generation": es.generation, "seed": es.seed, "table": es.table, "best_fitness": es.best_fitness},
        "hidden": carry.hidden,
        "generation": carry.generation,
    }


def _tree_carry(tree: dict[str, Any]) -> text.Carry:
    es = tree["es"]
    state = text.IntEggrollState(tree["params"], es["generation"], es["seed"], es["table"], es["best_fitness"])
    return text.Carry(state, tree["hidden"], tree["generation"])


def _old_format(directory: Path) -> Exception:
    return _error(
        f"the checkpoint in {directory} was written by an older `eggroll lm` (before eggroll.checkpoint) and "
        "cannot be read by this version; start a new run with another --out (or delete this one)."
    )


def _steps_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and p.name.isdigit()) if directory.is_dir() else []


def _checkpoint_dir(directory: Path) -> Path:
    """A run's ``checkpoints/``; a folder of the previous ``eggroll lm`` holds its steps itself."""
    if not directory.is_dir():
        raise _error(
            f"checkpoint directory {str(directory)!r} does not exist; train first with `eggroll lm --out DIR` "
            "(or start without --resume)."
        )
    inner = directory / "checkpoints"
    return inner if inner.is_dir() or not _steps_in(directory) else directory


def _open(directory: Path):
    from eggroll.run.checkpoint import Checkpointer  # read only: the run loop writes the checkpoints

    return Checkpointer(directory, max_to_keep=3, async_save=False)


def read_run_meta(ckpt) -> dict[str, Any]:
    """The JSON record of the newest step of an open checkpointer, with ``config``, ``corpus``, ``history``.

    Reads both layouts: the run loop's (``settings`` / ``extra``) and the
    previous ``eggroll lm``'s (``eggroll.checkpoint/lm-1``); ``meta["format"]`` says which.

    Raises:
        eggroll.checkpoint.CheckpointError: no checkpoint, an unreadable one, or
            one written by an ``eggroll lm`` older than :mod:`eggroll.checkpoint`.
    """
    from eggroll.run.checkpoint import CheckpointError

    try:
        meta = ckpt.read_meta()
    except CheckpointError:
        if any((ckpt.directory / str(s) / "state").is_dir() for s in ckpt.steps()):
            raise _old_format(ckpt.directory) from None
        raise
    extra = meta.get("extra") or {}
    if extra.get("format") == CHECKPOINT_FORMAT:
        settings = dict(meta["settings"])
        corpus = {"path": extra.get("corpus_path"), "bytes": settings.pop("corpus_bytes", None)}
        corpus["sha256"] = settings.pop("corpus_sha256", None)
        config = {**settings, "generations": int(extra["generations"])}
        return {**meta, "format": CHECKPOINT_FORMAT, "config": config, "corpus": corpus,
                "baselines": extra.get("baselines", {})}  # fmt: skip
    if meta.get("format") == OLD_FORMAT:
        return meta
    if "fingerprint" not in meta and "config" in meta:
        raise _old_format(ckpt.directory)
    raise _error(
        f"the checkpoint in {ckpt.directory} was not written by `eggroll lm` (format "
        f"{meta.get('format', extra.get('format'))!r}); point --out at an `eggroll lm` run."
    )


def resume_config(meta: Mapping[str, Any], given: Mapping[str, Any], directory: Path | str = "the checkpoint"):
    """The :class:`~eggroll.problems.text.LMConfig` of a resumed run.

    Settings come from the checkpoint (``meta`` from :func:`read_run_meta`);
    ``given`` are those set on the command line: each of the run's settings must
    equal the checkpoint's, and ``generations`` may only lengthen the threshold schedule.

    Raises:
        eggroll.checkpoint.CheckpointError: a given setting differs from the checkpoint's (all are named).
    """
    saved = dict(meta["config"])
    diff = [f"--{k.replace('_', '-')} {v} (checkpoint: {saved.get(k)})" for k, v in given.items()
            if k in _RUN_SETTINGS and saved.get(k) != v]  # fmt: skip
    if diff:
        raise _error(
            f"cannot resume {directory}: it was trained with other settings: {'; '.join(diff)}. Resume without "
            "these options (a resumed run takes its settings from the checkpoint) or start a new run with another "
            "--out."
        )
    if "generations" in given:
        saved["generations"] = max(int(given["generations"]), int(saved["generations"]))
    return text.LMConfig(**saved)


def restore_run(ckpt, task: text.LMTask | None = None) -> tuple[dict[str, Any], Any]:
    """Restore ``(meta, carry)`` from the newest step of an open :class:`~eggroll.checkpoint.Checkpointer`.

    With ``task`` (built from the checkpoint's settings, on any number of
    devices) the whole :class:`~eggroll.problems.text.Carry` is restored, placed
    like ``task.init()``; without it the saved arrays as ``{"params": ...,
    "es": ..., "hidden": ..., "generation": ...}`` on one device, enough for sampling.

    Raises:
        eggroll.checkpoint.CheckpointError: no checkpoint, a corrupt or
            old-format one, or one whose arrays or settings do not match ``task``.
    """
    import jax.numpy as jnp

    meta = read_run_meta(ckpt)
    if task is not None:
        ours = dataclasses.asdict(task.config)
        diff = [f"{k} {v} (checkpoint: {meta['config'].get(k)})" for k, v in ours.items()
                if k != "generations" and meta["config"].get(k) != v]  # fmt: skip
        if diff:
            raise _error(
                f"the checkpoint in {ckpt.directory} belongs to a run with other settings than this task: "
                f"{'; '.join(diff)}. Build the task from the checkpoint's settings (meta['config'])."
            )
        carry = task.init()
    else:
        init = text._compiled(text.LMConfig(**meta["config"]))[1]
        carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(init))
    if meta["format"] == CHECKPOINT_FORMAT:
        carry = ckpt.restore({"carry": carry}, meta["step"])[0]["carry"]
    else:
        carry = _tree_carry(ckpt.restore(_carry_tree(carry), meta["step"])[0])
    return meta, (carry if task is not None else _carry_tree(carry))


def load_checkpoint(directory: Path | str, task: text.LMTask | None = None) -> tuple[dict[str, Any], Any]:
    """Open a run's folder (its ``checkpoints/``, or an old ``--ckpt-dir``) and :func:`restore_run` its newest step.

    Raises:
        eggroll.checkpoint.CheckpointError: no such folder, or see :func:`restore_run`.
    """
    ckpt = _open(_checkpoint_dir(Path(directory)))
    try:
        return restore_run(ckpt, task)
    finally:
        ckpt.close()


def command_config(
    out: Path, resume: bool, settings: Mapping[str, Any], given: Mapping[str, Any]
) -> tuple[text.LMConfig, dict[str, Any] | None]:
    """The settings of an ``eggroll lm`` run into ``out``, and the corpus a resumed run was trained on.

    A fresh run takes ``settings``, into a folder that is new, empty or holds
    a run of this command (the loop refuses that one without ``--resume``); a
    resumed run takes the checkpoint's settings (``given`` must agree, see :func:`resume_config`).

    Raises:
        eggroll.checkpoint.CheckpointError: no run to resume, other settings, an old layout, or a
            folder that holds other files.
    """
    if out.exists() and not out.is_dir():
        raise _error(f"--out {str(out)!r} exists and is not a directory.")
    if not resume:
        if _steps_in(out) and not (out / "checkpoints").is_dir():
            raise _error(
                f"{str(out)!r} holds checkpoints of an older `eggroll lm` (steps {', '.join(_steps_in(out))}); "
                "they cannot be resumed by this version (`eggroll lm sample --out DIR` still reads them): choose "
                "another --out to start a new run."
            )
        inner = out / "checkpoints"
        others = sorted(p.name for p in out.iterdir() if p != inner) if out.is_dir() else []
        if others and not _steps_in(inner):
            raise _error(
                f"{str(out)!r} is not empty but holds no finished checkpoint ({', '.join(others[:5])}); choose "
                "another --out, or delete it to start over."
            )
        return text.LMConfig(**settings), None
    directory = _checkpoint_dir(out)
    if directory == out:
        raise _error(
            f"the checkpoint in {out} was written by an older `eggroll lm` (steps directly in the folder) and "
            "cannot be resumed by this version (`eggroll lm sample --out DIR` still reads it); start a new run "
            "with another --out."
        )
    ckpt = _open(directory)
    try:
        meta = read_run_meta(ckpt)
    finally:
        ckpt.close()
    return resume_config(meta, given, out), meta["corpus"]
