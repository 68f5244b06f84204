"""``eggroll lm``: train the integer language model with integer EGGROLL; ``eggroll lm sample``: generate.

Examples::

    eggroll lm --minutes 5                         # train on pydoc_data.topics, checkpoints in ./egg_lm
    eggroll lm --resume --minutes 5                # continue the same run
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

_META = "meta"
_STATE = "state"


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


def _manager(directory: Path, keep: int = 3):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        directory.resolve(), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    )


def save_checkpoint(manager, carry, meta: dict[str, Any]) -> None:
    """Save the ``int8`` params, the strategy state and the generation (orbax), plus JSON metadata."""
    import orbax.checkpoint as ocp

    step = int(carry.generation)
    manager.save(
        step,
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(_carry_tree(carry)), _META: ocp.args.JsonSave(meta)}),
        force=True,
    )
    manager.wait_until_finished()


def load_checkpoint(directory: Path, task=None) -> tuple[dict[str, Any], Any]:
    """Restore ``(meta, carry)`` from the latest step in ``directory``.

    With ``task`` the whole carry (strategy state, hidden states) is restored; without
    it only ``meta`` and ``{"params": ...}`` (enough for sampling).
    """
    import jax
    import orbax.checkpoint as ocp

    from eggroll.models import egg
    from eggroll.problems.text import LMConfig

    if not directory.is_dir():
        _fail(f"checkpoint directory {str(directory)!r} does not exist; train first with `eggroll lm --ckpt-dir DIR`.")
    manager = _manager(directory)
    step = manager.latest_step()
    if step is None:
        _fail(f"no checkpoint found in {str(directory)!r}; train first with `eggroll lm --ckpt-dir DIR`.")
    meta = manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META]
    config = LMConfig(**meta["config"])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if task is not None:
        abstract = jax.eval_shape(lambda: _carry_tree(task.init()))
    else:
        abstract = {"params": jax.eval_shape(lambda: egg.init(jax.random.key(0), config.model))}
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    restored = manager.restore(
        step, args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeRestore(abstract, partial_restore=True)})
    )[_STATE]
    if task is not None:
        return meta, _tree_carry(restored)
    return meta, restored


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
    ckpt_dir: Path = typer.Option(Path("egg_lm"), help="Checkpoint directory (orbax)."),
    ckpt_every: int = typer.Option(100, help="Save a checkpoint every N generations."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --ckpt-dir."),
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

    from eggroll.models import egg
    from eggroll.problems import text

    console = Console()
    try:
        data = text.load_corpus(corpus)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if ckpt_every < 1:
        _fail(f"--ckpt-every must be >= 1, got {ckpt_every}.")
    meta_prev: dict[str, Any] = {}
    config = text.LMConfig(
        width=width, depth=depth, mlp_ratio=mlp_ratio, population=population, rank=rank,
        sigma_shift=sigma_shift, chunk=chunk, group_pairs=group_pairs, generations=generations,
        alpha_start=alpha_start, alpha_end=alpha_end, seed=seed,
    )  # fmt: skip
    if resume:
        meta_prev, _ = load_checkpoint(ckpt_dir)
        saved = dict(meta_prev["config"])
        saved["generations"] = max(generations, saved["generations"])
        config = text.LMConfig(**saved)
        console.print(f"[bold]resuming[/] {ckpt_dir} (model and ES settings from the checkpoint)")
    try:
        config.validate()
        train_bytes, valid_bytes = text.split_bytes(data, config.valid_fraction)
        task = text.make_task(config, train_bytes, valid_bytes)
    except ValueError as err:
        _fail(str(err))
    carry, history = None, []
    if resume:
        meta_prev, carry = load_checkpoint(ckpt_dir, task)
        history = list(meta_prev.get("history", []))
    elif ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        _fail(f"{str(ckpt_dir)!r} already holds a run; pass --resume to continue it or choose another --ckpt-dir.")

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
    console.print(
        f"EGG {config.depth}x{config.width} ({n_params:,} int8 params), population {config.population}, "
        f"rank {config.rank}, sigma 2^-{config.sigma_shift}, chunk {config.chunk}; compiling..."
    )

    manager = _manager(ckpt_dir)
    last = {"valid_bpb": float("nan"), "train_bpb": float("nan"), "tokens_per_s": 0.0}

    def meta_now():
        return {"config": dataclasses.asdict(config), "history": history, "baselines": baselines}

    start = int(carry.generation) if carry is not None else 0
    columns = (
        TextColumn("gen {task.completed:>5.0f}/{task.total:.0f}"),
        BarColumn(),
        TextColumn("train {task.fields[train]:.3f}  valid {task.fields[valid]:.3f} bits/byte"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
    )
    budget = minutes * 60 if minutes is not None and minutes > 0 else None
    from eggroll.checkpoint import GracefulInterrupt
    from eggroll.logging import MetricsLogger

    logger = MetricsLogger(ckpt_dir / "metrics")
    logger.truncate(start + 1)  # a resumed run rewrites the generations after its checkpoint
    with GracefulInterrupt() as interrupt, logger, Progress(*columns, console=console) as progress:
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
                callback=on_record, validate_first=not history,
            )  # fmt: skip
            gen = int(carry.generation)
            save_checkpoint(manager, carry, meta_now())
            if interrupt.requested is not None:  # SIGTERM / Ctrl-C: saved above, stop cleanly
                break
            if gen < stop:  # the time budget ran out inside the segment
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
            f"continue with `eggroll lm --resume --ckpt-dir {ckpt_dir}`"
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

    from eggroll.models import egg

    if length < 0 or temperature < 0:
        _fail("--length and --temperature must be >= 0.")
    meta, tree = load_checkpoint(ckpt)
    out = egg.generate(tree["params"], prompt.encode("utf-8"), length, jax.random.key(seed), temperature)
    typer.echo(prompt + out.decode("utf-8", errors="replace"))
    valid = [r["valid_bpb"] for r in meta.get("history", []) if "valid_bpb" in r]
    if valid:
        typer.secho(f"(checkpoint valid bits/byte: {valid[-1]:.3f})", err=True, fg=typer.colors.BRIGHT_BLACK)
