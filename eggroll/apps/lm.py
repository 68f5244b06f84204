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
import jax.numpy as jnp

from eggroll import parallel
from eggroll.models import egg
from eggroll.problems import text
from eggroll.run.checkpoint import Checkpointer, CheckpointError
from eggroll.run.loop import RunOptions, RunResult, Task, run
from eggroll.run.progress import console

__all__ = ["CHECKPOINT_FORMAT", "LMTrainTask", "command_task", "load_checkpoint", "train_lm"]

# ``extra["format"]`` of an ``eggroll lm`` checkpoint (older layouts are not read: re-run them, or sample them
# with the previous release)
CHECKPOINT_FORMAT = "eggroll.lm/3"


# --------------------------------------------------------------------------- the task


def corpus_record(path: str | Path | None, data: bytes) -> dict[str, Any]:
    """What identifies a corpus: its path, size and SHA-256."""
    path = None if path is None else str(Path(path).resolve())
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def baselines(train, valid) -> dict[str, float]:
    """The unigram and bigram bits/byte of both splits (counts from ``train``)."""
    return {
        "unigram_train": text.unigram_bits(train, train),
        "unigram_valid": text.unigram_bits(train, valid),
        "bigram_train": text.bigram_bits(train, train),
        "bigram_valid": text.bigram_bits(train, valid),
    }


def _settings(config: text.LMConfig) -> dict[str, Any]:
    """The fields of ``config`` a resumed run must share (``generations`` may lengthen the schedule)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "generations"}


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
        self._elapsed0, self._t0 = 0.0, time.perf_counter()
        self._shown = {"train_bpb": float("nan"), "valid_bpb": float("nan"), "tokens_per_s": 0.0}
        # compile the step now (the first generation reuses it): a population the memory cannot hold is refused
        # before any file is written
        inputs, targets, reset = (problem.put(a) for a in problem.batch(self.offset))
        shapes = jax.eval_shape(problem.init) if carry is None else carry
        compiled = problem.step.lower(shapes, inputs, targets, reset).compile()
        what = f"a generation of {self.config.population} members x {self.config.chunk} bytes"
        parallel.check_fits(compiled, what, "use a smaller --population or --chunk, or more devices (--devices all)")

    # ------------------------------------------------------------------ hooks
    def settings(self) -> dict[str, Any]:
        return {**_settings(self.config), "corpus_sha256": self.corpus["sha256"], "corpus_bytes": self.corpus["bytes"]}

    def init(self) -> text.Carry:
        self._t0 = time.perf_counter()
        if self.verbose:
            self._announce()
        # the jitted step donates its carry: a carry given to start from is copied, so the caller's stays usable
        carry = self.problem.init() if self._start is None else jax.tree.map(jnp.copy, self._start)
        if self.sample_length > 0:  # compile the sampler now: at the end its compile would overrun --time-budget
            self._sample(carry)
        return carry

    def _sample(self, carry: text.Carry) -> str:
        got = egg.generate(carry.es_state.mean, b"The ", self.sample_length, jax.random.key(self.config.seed), 0.8)
        return "The " + got.decode("utf-8", errors="replace")

    def step(self, carry: text.Carry, generation: int) -> tuple[text.Carry, dict[str, Any]]:
        p = self.problem
        inputs, targets, reset = p.batch(self.offset + generation - 1)
        t0 = time.perf_counter()
        carry, metrics = p.step(carry, p.put(inputs), p.put(targets), p.put(reset))
        return carry, {
            "train_bpb": float(metrics["mean_fitness"]),  # waits for the device, so the time below is the step's
            "num_moved": int(metrics["num_moved"]),
            "tokens_per_s": self.config.population * self.config.chunk / (time.perf_counter() - t0),
            "elapsed_s": self._elapsed(),
        }

    def evaluate(self, carry: text.Carry, generation: int) -> tuple[text.Carry, dict[str, Any]] | None:
        if generation == 0 and not self.validate_first:
            return None
        return carry, {"valid_bpb": float(self.problem.validate(carry.es_state.mean)), "elapsed_s": self._elapsed()}

    def done(self, row: Mapping[str, Any]) -> bool:
        return self._stop is not None and bool(self._stop())

    def describe(self, row: Mapping[str, Any]) -> str:
        self._shown.update({k: row[k] for k in self._shown if row.get(k) is not None})
        s = self._shown
        return f"train {s['train_bpb']:.3f}  valid {s['valid_bpb']:.3f} bits/byte  {s['tokens_per_s']:,.0f} tok/s"

    def save_extra(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "generations": self.config.generations,
            "corpus": self.corpus,
            "elapsed_s": self._elapsed(),
        }

    def load_extra(self, extra: Mapping[str, Any]) -> None:
        self._elapsed0 = float(extra.get("elapsed_s", 0.0))
        if self.verbose:
            console.print("[bold]resuming[/] (settings and corpus from the checkpoint)")

    def finish(self, carry: text.Carry, result: RunResult) -> dict[str, Any]:
        out = Path(result.out)
        plot = Path(self.plot) if self.plot is not None else out / "learning_curve.png"
        c = self.config
        title = f"EGG {c.depth}x{c.width}, N={c.population}"
        text.plot_learning_curve(result.history, self.baselines, plot, title=title)
        valid = [r["valid_bpb"] for r in result.history if r.get("valid_bpb") is not None] or [float("nan")]
        record: dict[str, Any] = {
            "files": {"plot": str(plot)},  # the loop records it relative to --out when it lies there
            "valid_bpb": valid[-1],
            "valid_bpb_start": valid[0],
            "baselines": self.baselines,
            "corpus": self.corpus,
            "params": egg.num_params(carry.es_state.mean),
        }
        if self.sample_length > 0 and result.stopped_by not in ("SIGTERM", "SIGINT"):
            record["sample"] = self._sample(carry)
        if self.verbose:
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

        b, c, p = self.baselines, self.config, self.problem
        if b and self.corpus["bytes"]:
            n_train = int(round(self.corpus["bytes"] * (1 - c.valid_fraction)))  # as text.split_bytes
            n_valid = self.corpus["bytes"] - n_train
            title = f"baselines, bits/byte ({n_train:,} train / {n_valid:,} valid bytes)"
            table = Table("model", "train", "valid", title=title)
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
    lm = LMTrainTask(task, carry=carry, validate_first=validate_first, stop=stop)
    end = task.config.generations if generations is None else generations
    if end <= lm.offset:
        return (task.init() if carry is None else carry), []

    def record(row: Mapping[str, Any]) -> dict:
        return {**row, "generation": row["generation"] + lm.offset, "elapsed": row.get("elapsed_s", 0.0)}

    on_row = None if callback is None else (lambda _generation, row: callback(record(row)))
    options = RunOptions(generations=end - lm.offset, time_budget=time_budget, eval_every=valid_every, quiet=True)
    result = run(lm, options, callback=on_row)
    return result.carry, [record(r) for r in result.history]


# --------------------------------------------------------------------------- reading a run back


def _open(out: Path):
    """The checkpoints of the run in ``out``, opened for reading (the run loop writes them)."""
    directory = Path(out) / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(
            f"{str(directory)!r} does not exist: {str(out)!r} holds no `eggroll lm` run; train one first with "
            "`eggroll lm --out DIR` (a fresh run: without --resume). A run of an older `eggroll lm` (before the one "
            "run loop, steps directly in its folder) must be re-run, or sampled with the previous release."
        )
    return Checkpointer(directory, max_to_keep=3, async_save=False)


def _read_meta(ckpt) -> dict[str, Any]:
    """The newest step's JSON record, plus the run's ``config`` (:class:`~eggroll.problems.text.LMConfig` fields)
    and ``corpus`` (:func:`corpus_record`)."""
    meta = ckpt.read_meta()
    extra = meta.get("extra") or {}
    if extra.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"the checkpoint in {ckpt.directory} was not written by this `eggroll lm` (format "
            f"{extra.get('format')!r}); point --out at an `eggroll lm` run, or choose another --out for a new one."
        )
    config = {k: v for k, v in meta["settings"].items() if not k.startswith("corpus_")}
    return {**meta, "config": {**config, "generations": int(extra["generations"])}, "corpus": extra["corpus"]}


def load_checkpoint(directory: Path | str, task: text.LMTask | None = None) -> tuple[dict[str, Any], Any]:
    """Restore ``(meta, carry)`` from the newest checkpoint of the run in ``directory`` (its ``checkpoints/``).

    ``meta`` is the checkpoint's JSON record with the run's ``config``
    (:class:`~eggroll.problems.text.LMConfig` fields), ``corpus`` and
    ``history``. With ``task`` (built from ``meta["config"]``, on any number of
    devices) the whole :class:`~eggroll.problems.text.Carry` is restored, placed
    like ``task.init()``; without it the saved arrays as ``{"params": mean,
    "es_state": ..., "hidden": ..., "generation": ...}`` on one device, enough for sampling.

    Raises:
        eggroll.run.checkpoint.CheckpointError: no run in ``directory``, a checkpoint not written by
            ``eggroll lm``, a corrupt one, or one whose arrays do not match ``task``.
        ValueError: ``task`` has other settings than the checkpoint (each difference named).
    """
    import jax.numpy as jnp

    with _open(Path(directory)) as ckpt:
        meta = _read_meta(ckpt)
        if task is None:
            init = text._compiled(text.LMConfig(**meta["config"]))[1]
            carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(init))
        else:
            ckpt.check_settings(meta["settings"], _settings(task.config))
            carry = task.init()
        carry = ckpt.restore({"carry": carry})[0]["carry"]
    return meta, (carry if task is not None else {"params": carry.es_state.mean, **carry._asdict()})


# --------------------------------------------------------------------------- the command


def command_task(
    out: Path,
    resume: bool,
    settings: Mapping[str, Any],
    given: Mapping[str, Any],
    *,
    corpus: str | Path | None = None,
    mesh: Any = None,
    sample_length: int = 0,
    plot: str | Path | None = None,
) -> LMTrainTask:
    """The task of an ``eggroll lm`` run into ``out``: its settings, the corpus read and split, the baselines.

    A fresh run takes ``settings``, into a folder that is new, empty or holds
    a run of this command (the loop refuses that one without ``--resume``). A
    resumed run takes the checkpoint's settings with those ``given`` on the
    command line on top (the loop refuses any that differ, naming each), except
    ``generations``, which may lengthen the run and its threshold schedule; and
    its corpus, unless ``corpus`` is given (its SHA-256 must match).

    Args:
        out: the run's folder.
        resume: continue the run in ``out``.
        settings: every :class:`~eggroll.problems.text.LMConfig` field the command sets.
        given: those of ``settings`` given on the command line.
        corpus: a text file (``None``: a resumed run's, else :func:`eggroll.problems.text.default_corpus`).
        mesh: split the population over this device mesh (``None``: one device).
        sample_length: see :class:`LMTrainTask`.
        plot: see :class:`LMTrainTask`.

    Raises:
        eggroll.run.checkpoint.CheckpointError: no run to resume, or a folder that holds other files.
        FileNotFoundError, ValueError: a missing or short corpus, another corpus than the resumed run's,
            bad settings, or a population that does not split over the devices.
    """
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {str(out)!r} exists and is not a directory.")
    saved = None
    if resume:
        with _open(out) as ckpt:
            meta = _read_meta(ckpt)
        saved = meta["corpus"]
        corpus = saved["path"] if corpus is None else corpus
        generations = max(int(given.get("generations", 0)), meta["config"]["generations"])
        config = text.LMConfig(**{**meta["config"], **given, "generations": generations})
    else:
        others = sorted(p.name for p in out.iterdir() if p.name != "checkpoints") if out.is_dir() else []
        if others and not any(p.name.isdigit() for p in (out / "checkpoints").glob("*")):
            raise CheckpointError(
                f"{str(out)!r} is not empty but holds no finished checkpoint ({', '.join(others[:5])}); nothing "
                "was written there: choose a new or empty --out for this run."
            )
        config = text.LMConfig(**settings)
    data = text.load_corpus(corpus)
    record = corpus_record(corpus, data)
    if saved is not None and saved["sha256"] != record["sha256"]:
        raise ValueError(
            f"cannot resume: the run was trained on another corpus ({saved['path'] or 'the default'}, "
            f"{saved['bytes']:,} bytes) than {corpus or 'the default'} ({len(data):,} bytes); "
            "resume with the same --corpus."
        )
    train, valid = text.split_bytes(data, config.valid_fraction)
    return LMTrainTask(
        text.make_task(config, train, valid, mesh=mesh), corpus=record, baselines=baselines(train, valid),
        sample_length=sample_length, plot=plot, verbose=True,
    )  # fmt: skip
