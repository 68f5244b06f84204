"""``eggroll lm``: train the integer language model with integer EGGROLL; ``eggroll lm sample``: generate.

Examples::

    eggroll lm --minutes 5                         # train on pydoc_data.topics, checkpoints in ./egg_lm
    eggroll lm --resume --minutes 5                # continue the same run (its settings, from the checkpoint)
    eggroll lm --devices all --population 1024     # split the population over every device
    eggroll lm sample --ckpt egg_lm --prompt "The "
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="Integer-only byte-level language model trained with integer EGGROLL.",
    no_args_is_help=False,
    add_completion=False,
)

CHECKPOINT_FORMAT = "eggroll.checkpoint/lm-1"
"""``meta["format"]`` of the checkpoints written by this command (older ones cannot be resumed)."""

# LMConfig fields a resumed run takes from its checkpoint; one given on the command line must agree.
_RUN_SETTINGS = (
    "width", "depth", "mlp_ratio", "population", "rank", "sigma_shift", "chunk", "group_pairs",
    "alpha_start", "alpha_end", "seed",
)  # fmt: skip


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# --------------------------------------------------------------------------- checkpoints


def _carry_tree(carry) -> dict[str, Any]:
    es = carry.es_state
    return {
        "params": es.mean,
        "es": {"generation": es.generation, "seed": es.seed, "table": es.table, "best_fitness": es.best_fitness},
        "hidden": carry.hidden,
        "generation": carry.generation,
    }


def _tree_carry(tree: dict[str, Any]):
    from eggroll.problems.text import Carry
    from eggroll.strategies.int_eggroll import IntEggrollState

    es = tree["es"]
    state = IntEggrollState(tree["params"], es["generation"], es["seed"], es["table"], es["best_fitness"])
    return Carry(state, tree["hidden"], tree["generation"])


_METRIC_COLUMNS = ("train_bpb", "valid_bpb", "tokens_per_s", "num_moved", "elapsed")


def _open(directory: Path, every: int | None = None):
    """The :class:`~eggroll.checkpoint.Checkpointer` of an existing run directory."""
    from eggroll.checkpoint import Checkpointer, CheckpointError

    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint directory {str(directory)!r} does not exist; train first with `eggroll lm --ckpt-dir DIR` "
            "(or start without --resume)."
        )
    return Checkpointer(directory, every=every, max_to_keep=3, async_save=False)


def read_run_meta(ckpt) -> dict[str, Any]:
    """The JSON record of the newest step, checked to be an ``eggroll lm`` checkpoint of this format.

    Raises:
        eggroll.checkpoint.CheckpointError: no checkpoint, an unreadable one, or
            one written by an older ``eggroll lm`` (before :mod:`eggroll.checkpoint`).
    """
    from eggroll.checkpoint import CheckpointError

    try:
        meta = ckpt.read_meta()
    except CheckpointError:
        if any((ckpt.directory / str(s) / "state").is_dir() for s in ckpt.steps()):
            raise _old_format(ckpt.directory) from None
        raise
    if meta.get("format") != CHECKPOINT_FORMAT:
        if "fingerprint" not in meta and "config" in meta:
            raise _old_format(ckpt.directory)
        raise CheckpointError(
            f"the checkpoint in {ckpt.directory} was not written by `eggroll lm` (format {meta.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}); point --ckpt-dir at an `eggroll lm` run."
        )
    return meta


def _old_format(directory: Path):
    from eggroll.checkpoint import CheckpointError

    return CheckpointError(
        f"the checkpoint in {directory} was written by an older `eggroll lm` (before eggroll.checkpoint) and "
        "cannot be read by this version; start a new run with another --ckpt-dir (or delete this one)."
    )


def resume_config(meta: dict[str, Any], given: dict[str, Any], directory: Path | str = "the checkpoint"):
    """The :class:`~eggroll.problems.text.LMConfig` of a resumed run.

    Settings come from the checkpoint; ``given`` are those set on the command
    line: each of :data:`_RUN_SETTINGS` must equal the checkpoint's, and
    ``generations`` may only lengthen the threshold schedule.

    Raises:
        eggroll.checkpoint.CheckpointError: a given setting differs from the checkpoint's (all are named).
    """
    from eggroll.checkpoint import CheckpointError
    from eggroll.problems.text import LMConfig

    saved = dict(meta["config"])
    diff = [f"--{k.replace('_', '-')} {v} (checkpoint: {saved.get(k)})" for k, v in given.items()
            if k in _RUN_SETTINGS and saved.get(k) != v]  # fmt: skip
    if diff:
        raise CheckpointError(
            f"cannot resume {directory}: it was trained with other settings: {'; '.join(diff)}. Resume without "
            "these options (a resumed run takes its settings from the checkpoint) or start a new run with another "
            "--ckpt-dir."
        )
    if "generations" in given:
        saved["generations"] = max(int(given["generations"]), int(saved["generations"]))
    return LMConfig(**saved)


def restore_run(ckpt, task=None) -> tuple[dict[str, Any], Any]:
    """Restore ``(meta, carry)`` from the newest step of an open :class:`~eggroll.checkpoint.Checkpointer`.

    With ``task`` (built from the checkpoint's settings, on any number of
    devices) the whole :class:`~eggroll.problems.text.Carry` is restored, placed
    like ``task.init()``; without it the saved tree (``{"params": ...}`` and
    the strategy state, on one device), enough for sampling.

    Raises:
        eggroll.checkpoint.CheckpointError: no checkpoint, a corrupt or
            old-format one, or one whose arrays do not match ``task``.
    """
    import jax
    import jax.numpy as jnp

    from eggroll.checkpoint import CheckpointError
    from eggroll.problems.text import LMConfig, _compiled

    meta = read_run_meta(ckpt)
    if task is not None:
        ours = dataclasses.asdict(task.config)
        diff = [f"{k} {v} (checkpoint: {meta['config'].get(k)})" for k, v in ours.items()
                if k != "generations" and meta["config"].get(k) != v]  # fmt: skip
        if diff:
            raise CheckpointError(
                f"the checkpoint in {ckpt.directory} belongs to a run with other settings than this task: "
                f"{'; '.join(diff)}. Build the task from the checkpoint's settings (meta['config'])."
            )
        template = _carry_tree(task.init())
    else:
        init = _compiled(LMConfig(**meta["config"]))[1]
        template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _carry_tree(jax.eval_shape(init)))
    tree, meta = ckpt.restore(template)
    return meta, (_tree_carry(tree) if task is not None else tree)


def load_checkpoint(directory: Path | str, task=None) -> tuple[dict[str, Any], Any]:
    """Open ``directory`` and :func:`restore_run` its newest step.

    Raises:
        eggroll.checkpoint.CheckpointError: no such directory, or see :func:`restore_run`.
    """
    ckpt = _open(Path(directory))
    try:
        return restore_run(ckpt, task)
    finally:
        ckpt.close()


def _corpus_record(path: Path | None, data: bytes) -> dict[str, Any]:
    import hashlib

    return {
        "path": None if path is None else str(path.resolve()),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# --------------------------------------------------------------------------- commands


@app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    corpus: Path | None = typer.Option(None, help="Text file to train on (default: Python's pydoc_data.topics)."),
    width: int = typer.Option(64, help="Model width D (64 or 256 make every rescale a shift)."),
    depth: int = typer.Option(2, help="Number of blocks."),
    mlp_ratio: int = typer.Option(4, help="MLP hidden width / D."),
    population: int = typer.Option(512, help="ES population size (even)."),
    rank: int = typer.Option(1, help="Rank of the matrix perturbations."),
    sigma_shift: int = typer.Option(4, help="sigma = 2**-sigma_shift."),
    chunk: int = typer.Option(64, help="Bytes per member per generation."),
    group_pairs: int = typer.Option(1, help="Antithetic pairs that share one text chunk."),
    generations: int = typer.Option(1000, help="Generations (also the length of the threshold schedule)."),
    minutes: float | None = typer.Option(10.0, help="Stop after this many minutes (0 or less: no limit)."),
    stop_at: int | None = typer.Option(None, help="Stop (and checkpoint) at this generation; resume later."),
    alpha_start: float = typer.Option(1.0, help="z-test level at the start (1: every weight with Z != 0 moves)."),
    alpha_end: float = typer.Option(1 / 16, help="z-test level at the last generation."),
    valid_every: int = typer.Option(25, help="Score the validation split every N generations."),
    ckpt_dir: Path = typer.Option(Path("egg_lm"), help="Checkpoint directory (orbax, via eggroll.checkpoint)."),
    ckpt_every: int = typer.Option(100, help="Save a checkpoint every N generations (and on SIGTERM / Ctrl-C)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint in --ckpt-dir (its settings)."
    ),
    devices: str = typer.Option(
        "auto", help="Devices of this host that split the population: auto (one device), all, or N."
    ),
    plot: Path | None = typer.Option(None, help="Learning-curve PNG (default: CKPT_DIR/learning_curve.png)."),
    seed: int = typer.Option(0, help="Seed of the model and the noise."),
    sample_length: int = typer.Option(120, help="Bytes of text to sample from the final model (0: none)."),
) -> None:
    """Train the integer EGG model with integer EGGROLL and plot its learning curve."""
    if ctx.invoked_subcommand is not None:
        return
    import jax
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from eggroll.checkpoint import Checkpointer, CheckpointError, GracefulInterrupt
    from eggroll.logging import MetricsLogger
    from eggroll.models import egg
    from eggroll.parallel import mesh_from_option
    from eggroll.problems import text

    console = Console()
    if ckpt_every < 1:
        _fail(f"--ckpt-every must be >= 1, got {ckpt_every}.")
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        _fail(f"--ckpt-dir {str(ckpt_dir)!r} exists and is not a directory.")

    if jax.process_count() > 1:
        _fail(
            "eggroll lm runs on one host (all of its devices with --devices all); multi-host training of the "
            "integer LM is not supported yet. Start it without --coordinator / EGGROLL_COORDINATOR."
        )
    try:
        mesh = mesh_from_option(devices)
    except ValueError as err:
        _fail(str(err))
    settings = dict(
        width=width, depth=depth, mlp_ratio=mlp_ratio, population=population, rank=rank, sigma_shift=sigma_shift,
        chunk=chunk, group_pairs=group_pairs, generations=generations, alpha_start=alpha_start, alpha_end=alpha_end,
        seed=seed,
    )  # fmt: skip
    # the settings set on the command line (typer vendors its own click: compare the source by name)
    given = {k: v for k, v in settings.items() if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") != "DEFAULT"}
    meta_prev: dict[str, Any] = {}
    if resume:
        ckpt = None
        try:
            ckpt = _open(ckpt_dir, ckpt_every)
            meta_prev = read_run_meta(ckpt)
            config = resume_config(meta_prev, given, ckpt.directory)
        except CheckpointError as err:
            if ckpt is not None:
                ckpt.close()
            _fail(str(err))
        saved_corpus = meta_prev.get("corpus", {})
        if corpus is None and saved_corpus.get("path"):
            corpus = Path(saved_corpus["path"])
    else:
        config = text.LMConfig(**settings)
        ckpt = Checkpointer(ckpt_dir, every=ckpt_every, max_to_keep=3, async_save=False)
        steps = ckpt.steps()
        if steps:
            ckpt.close()
            _fail(
                f"{str(ckpt_dir)!r} already holds checkpoints of a run (generations {steps}); pass --resume "
                "to continue it, or choose another --ckpt-dir to start a new run."
            )
        others = sorted(p.name for p in ckpt_dir.iterdir())
        if others:
            ckpt.close()
            _fail(
                f"{str(ckpt_dir)!r} is not empty but holds no finished checkpoint ({', '.join(others[:5])}); "
                "choose another --ckpt-dir, or delete it to start over."
            )
    try:
        data = text.load_corpus(corpus)
        corpus_record = _corpus_record(corpus, data)
        if resume and meta_prev["corpus"]["sha256"] != corpus_record["sha256"]:
            old = meta_prev["corpus"]
            raise CheckpointError(
                f"cannot resume {ckpt_dir}: it was trained on another corpus ({old['path'] or 'the default'}, "
                f"{old['bytes']:,} bytes) than {corpus or 'the default'} ({len(data):,} bytes); resume with the "
                "same --corpus."
            )
        config.validate()
        train_bytes, valid_bytes = text.split_bytes(data, config.valid_fraction)
        task = text.make_task(config, train_bytes, valid_bytes, mesh=mesh)
        carry, history = None, []
        if resume:
            meta_prev, carry = restore_run(ckpt, task)
            history = list(meta_prev.get("history", []))
            console.print(
                f"[bold]resuming[/] {ckpt_dir} at generation {int(carry.generation)} (settings from the checkpoint)"
            )
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        ckpt.close()
        _fail(str(err))

    baselines = {
        "unigram_train": text.unigram_bits(train_bytes, train_bytes),
        "unigram_valid": text.unigram_bits(train_bytes, valid_bytes),
        "bigram_train": text.bigram_bits(train_bytes, train_bytes),
        "bigram_valid": text.bigram_bits(train_bytes, valid_bytes),
    }
    table = Table(title=f"baselines, bits/byte ({len(train_bytes):,} train / {len(valid_bytes):,} valid bytes)")
    table.add_column("model")
    table.add_column("train", justify="right")
    table.add_column("valid", justify="right")
    table.add_row("uniform", "8.000", "8.000")
    for name in ("unigram", "bigram"):
        table.add_row(name, f"{baselines[name + '_train']:.3f}", f"{baselines[name + '_valid']:.3f}")
    console.print(table)
    n_params = egg.num_params(jax.eval_shape(lambda: egg.init(jax.random.key(0), config.model)))
    n_dev = 1 if mesh is None else mesh.devices.size
    console.print(
        f"EGG {config.depth}x{config.width} ({n_params:,} int8 params), population {config.population}, "
        f"rank {config.rank}, sigma 2^-{config.sigma_shift}, chunk {config.chunk}, "
        f"{n_dev} device{'s' if n_dev > 1 else ''}; compiling..."
    )

    last = {"valid_bpb": float("nan"), "train_bpb": float("nan"), "tokens_per_s": 0.0}

    def save(carry) -> None:
        meta = {
            "format": CHECKPOINT_FORMAT,
            "generation": int(carry.generation),
            "config": dataclasses.asdict(config),
            "corpus": corpus_record,
            "history": history,
            "baselines": baselines,
        }
        ckpt.save(int(carry.generation), _carry_tree(carry), meta)

    start = int(carry.generation) if carry is not None else 0
    columns = (
        TextColumn("gen {task.completed:>5.0f}/{task.total:.0f}"),
        BarColumn(),
        TextColumn("train {task.fields[train]:.3f}  valid {task.fields[valid]:.3f} bits/byte"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
    )
    budget = minutes * 60 if minutes is not None and minutes > 0 else None
    logger = MetricsLogger(ckpt_dir / "metrics")
    logger.truncate(start + 1)  # a resumed run rewrites the generations after its checkpoint
    with ckpt, GracefulInterrupt() as interrupt, logger, Progress(*columns, console=console) as progress:
        bar = progress.add_task("train", total=config.generations, completed=start, train=last["train_bpb"],
                                valid=last["valid_bpb"], tps=0.0)  # fmt: skip

        def on_record(record):
            history.append(record)
            # fixed columns (the CSV header is the first row's): NaN where a record lacks a value
            logger.log(record["generation"], {k: record.get(k, float("nan")) for k in _METRIC_COLUMNS})
            last.update({k: v for k, v in record.items() if k in last})
            progress.update(bar, completed=record["generation"], train=last["train_bpb"], valid=last["valid_bpb"],
                            tps=last["tokens_per_s"])  # fmt: skip

        gen = start
        t0 = time.perf_counter()
        end = config.generations if stop_at is None else min(stop_at, config.generations)
        while gen < end:
            stop = min(end, (gen // ckpt_every + 1) * ckpt_every)
            remaining = None if budget is None else budget - (time.perf_counter() - t0)
            if remaining is not None and remaining <= 0:
                break
            carry, _ = text.train_lm(
                task, carry, generations=stop, time_budget=remaining, valid_every=valid_every,
                callback=on_record, validate_first=not history, stop=lambda: interrupt.requested is not None,
            )  # fmt: skip
            gen = int(carry.generation)
            save(carry)  # every --ckpt-every generations, and where the time budget or a signal stopped the run
            if interrupt.requested is not None or gen < stop:
                break
    plot_path = plot or ckpt_dir / "learning_curve.png"
    text.plot_learning_curve(
        history, baselines, plot_path, title=f"EGG {config.depth}x{config.width}, N={config.population}"
    )
    valid = [r["valid_bpb"] for r in history if "valid_bpb" in r] or [float("nan")]
    console.print(
        f"[bold green]done[/] generation {gen}: valid {valid[-1]:.3f} bits/byte (start {valid[0]:.3f}; "
        f"unigram {baselines['unigram_valid']:.3f}, bigram {baselines['bigram_valid']:.3f}); "
        f"checkpoint {ckpt_dir}, curve {plot_path}"
    )
    if interrupt.requested is not None:
        console.print(
            f"[yellow]{interrupt.signal_name}[/]: stopped after generation {gen} with a checkpoint; "
            f"continue with the same command plus --resume (`eggroll lm --resume --ckpt-dir {ckpt_dir}`)"
        )
        raise typer.Exit(143 if interrupt.signal_name == "SIGTERM" else 130)
    if sample_length > 0 and carry is not None:
        sample_bytes = egg.generate(carry.es_state.mean, b"The ", sample_length, jax.random.key(seed), 0.8)
        console.print("[bold]sample:[/]")
        console.print("The " + sample_bytes.decode("utf-8", errors="replace"), markup=False, highlight=False)


@app.command()
def sample(
    ckpt: Path = typer.Option(..., help="Checkpoint directory written by `eggroll lm`."),
    prompt: str = typer.Option("The ", help="Text to continue."),
    length: int = typer.Option(200, help="Bytes to generate."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0: greedy)."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Generate text from the latest checkpoint in CKPT."""
    import jax

    from eggroll.checkpoint import CheckpointError
    from eggroll.models import egg

    if length < 0 or temperature < 0:
        _fail("--length and --temperature must be >= 0.")
    try:
        meta, tree = load_checkpoint(ckpt)
    except CheckpointError as err:
        _fail(str(err))
    out = egg.generate(tree["params"], prompt.encode("utf-8"), length, jax.random.key(seed), temperature)
    typer.echo(prompt + out.decode("utf-8", errors="replace"))
    valid = [r["valid_bpb"] for r in meta.get("history", []) if "valid_bpb" in r]
    if valid:
        typer.secho(f"(checkpoint valid bits/byte: {valid[-1]:.3f})", err=True, fg=typer.colors.BRIGHT_BLACK)
