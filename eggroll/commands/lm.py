"""``eggroll lm``: train the integer language model with integer EGGROLL; ``eggroll lm sample``: generate.

Examples::

    eggroll lm --out runs/lm                       # train on pydoc_data.topics: runs/lm/{checkpoints,metrics,...}
    eggroll lm --out runs/lm --resume              # continue the same run (its settings, from the checkpoint)
    eggroll lm --devices all --population 1024     # split the population over every device
    eggroll lm sample --out runs/lm --prompt "The "

The run itself is :class:`eggroll.apps.lm.LMTrainTask` in the shared run loop;
this module only parses the options.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from eggroll.commands import _common


def __getattr__(name: str) -> Any:
    """The old entry points of this module, now in :mod:`eggroll.apps.lm` (imported when first used)."""
    if name in ("CHECKPOINT_FORMAT", "load_checkpoint"):
        from eggroll.apps import lm

        return getattr(lm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


app = typer.Typer(
    cls=_common.OneLineErrors,
    help="Integer-only byte-level language model trained with integer EGGROLL.",
    add_completion=False,
)


def _given(ctx: typer.Context, name: str) -> bool:
    # typer vendors its own click: compare the parameter source by name
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


def _alias(ctx: typer.Context, old: str, new: str, value: Any, current: Any) -> Any:
    """The value of ``--new``, or of its hidden old name ``--old`` (not both)."""
    if value is None:
        return current
    if _given(ctx, new.lstrip("-").replace("-", "_")):
        _common.fail(f"{old} is the old name of {new}; give only {new}")
    return value


@app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    out: Path = _common.out_option("runs/lm"),
    generations: int = typer.Option(
        1000, "--generations", help="Generations to run in total (also the length of the threshold schedule)."
    ),
    population: int = _common.population_option(2048, " (even; a multiple of 2 x devices)"),
    seed: int = _common.SEED,
    checkpoint_every: int = typer.Option(
        100, "--checkpoint-every", min=1, help="Checkpoint every K generations (also on SIGTERM / Ctrl-C, at the end)."
    ),
    resume: bool = _common.RESUME,
    resume_from: int | None = _common.RESUME_FROM,
    devices: str = _common.DEVICES,
    time_budget: float | None = _common.TIME_BUDGET,
    quiet: bool = _common.QUIET,
    eval_every: int = typer.Option(25, "--eval-every", help="Score the validation split every N generations."),
    corpus: Path | None = typer.Option(None, help="Text file to train on (default: Python's pydoc_data.topics)."),
    width: int = typer.Option(64, help="Model width D (64 or 256 make every rescale a shift)."),
    depth: int = typer.Option(2, help="Number of blocks."),
    mlp_ratio: int = typer.Option(2, help="MLP hidden width / D."),
    rank: int = typer.Option(1, help="Rank of the matrix perturbations."),
    sigma_shift: int = typer.Option(3, help="sigma = 2**-sigma_shift."),
    chunk: int = typer.Option(16, help="Bytes per member per generation."),
    group_pairs: int = typer.Option(1, help="Antithetic pairs that share one text chunk."),
    alpha_start: float = typer.Option(1.0, help="z-test level at the start (1: every weight with Z != 0 moves)."),
    alpha_end: float = typer.Option(0.25, help="z-test level at the last generation."),
    sample_length: int = typer.Option(120, help="Bytes of text to sample from the final model (0: none)."),
    # the old names, for one release
    ckpt_dir: Path | None = typer.Option(None, "--ckpt-dir", hidden=True, help="Old name of --out."),
    ckpt_every: int | None = typer.Option(None, "--ckpt-every", hidden=True, help="Old name of --checkpoint-every."),
    minutes: float | None = typer.Option(None, "--minutes", hidden=True, help="--time-budget in minutes."),
    valid_every: int | None = typer.Option(None, "--valid-every", hidden=True, help="Old name of --eval-every."),
    stop_at: int | None = typer.Option(None, "--stop-at", hidden=True, help="Stop (with a checkpoint) here."),
    plot: Path | None = typer.Option(None, "--plot", hidden=True, help="Learning-curve PNG (default OUT/...)."),
) -> None:
    """Train the integer EGG model with integer EGGROLL and plot its learning curve."""
    if ctx.invoked_subcommand is not None:
        return
    import jax

    from eggroll.apps import lm
    from eggroll.parallel import mesh_from_option

    out = _alias(ctx, "--ckpt-dir", "--out", ckpt_dir, out)
    checkpoint_every = _alias(ctx, "--ckpt-every", "--checkpoint-every", ckpt_every, checkpoint_every)
    eval_every = _alias(ctx, "--valid-every", "--eval-every", valid_every, eval_every)
    if minutes is not None:  # --minutes M: a budget of 60 M seconds (0 or less: none)
        time_budget = _alias(ctx, "--minutes", "--time-budget", minutes * 60 if minutes > 0 else None, time_budget)
    if jax.process_count() > 1:
        _common.fail(
            "eggroll lm runs on one host (all of its devices with --devices all); multi-host training of the "
            "integer LM is not supported yet. Start it without --coordinator / EGGROLL_COORDINATOR."
        )
    # the options that set the run (the LMConfig fields), and those of them given on the command line
    _common.check_values(locals())
    if sample_length < 0:
        _common.fail(f"--sample-length must be >= 0 (0: no sample), got {sample_length}")
    settings = {k: v for k, v in ctx.params.items() if k in {f.name for f in dataclasses.fields(lm.text.LMConfig)}}
    given = {k: v for k, v in settings.items() if _given(ctx, k)}
    task = _common.execute_result(lambda: lm.command_task(
        out, resume, settings, given, corpus=corpus, mesh=mesh_from_option(devices), sample_length=sample_length,
        plot=plot,
    ))  # fmt: skip
    run_options = _common.options(locals(), generations=task.config.generations, stop_after=stop_at, max_to_keep=3)
    result = _common.execute(lambda: task, run_options)
    _common.finish(result)


@app.command()
def sample(
    out: Path = typer.Option(Path("runs/lm"), "--out", help="The folder of an `eggroll lm` run."),
    prompt: str = typer.Option("The ", help="Text to continue."),
    length: int = typer.Option(200, help="Bytes to generate."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0: greedy)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    ckpt: Path | None = typer.Option(None, "--ckpt", hidden=True, help="Old name of --out."),
) -> None:
    """Generate text from the newest checkpoint of the run in --out."""
    import jax

    from eggroll.apps.lm import load_checkpoint
    from eggroll.models import egg

    out = ckpt if ckpt is not None else out
    if length < 0 or temperature < 0:
        _common.fail("--length and --temperature must be >= 0.")
    meta, tree = _common.execute_result(lambda: load_checkpoint(out))
    text = egg.generate(tree["params"], prompt.encode("utf-8"), length, jax.random.key(seed), temperature)
    typer.echo(prompt + text.decode("utf-8", errors="replace"))
    valid = [r["valid_bpb"] for r in meta.get("history", []) if r.get("valid_bpb") is not None]
    if valid:
        typer.secho(f"(checkpoint valid bits/byte: {valid[-1]:.3f})", err=True, fg=typer.colors.BRIGHT_BLACK)
