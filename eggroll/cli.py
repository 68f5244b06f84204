"""The ``eggroll`` command.

``eggroll demo`` is the main job (embedded defaults, no download). Each other
sub-command lives in ``eggroll/commands/<name>.py`` as a typer app and is
imported when the CLI starts; heavy libraries are imported inside commands.
"""

from __future__ import annotations

import importlib
import os

import typer

from eggroll.commands import _common as common

app = typer.Typer(
    cls=common.OneLineErrors,
    help="eggroll: evolution strategies in JAX with low-rank perturbations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

SUBCOMMANDS = {
    "bbob": "BBOB benchmark runner (COCO's 24 functions).",
    "rl": "Neuroevolution on gymnax / Brax environments.",
    "lm": "Train the integer-only recurrent language model.",
    "finetune": "Backprop-free fine-tuning of a pretrained LLM.",
    "evollm": "EvoLLM: a language model as the ES recombination operator.",
}

for _name, _help in SUBCOMMANDS.items():
    app.add_typer(importlib.import_module(f"eggroll.commands.{_name}").app, name=_name, help=_help)


@app.callback()
def main_options(
    coordinator: str = typer.Option(
        None, help="Multi-host runs: host:port of process 0 (or EGGROLL_COORDINATOR / JAX_COORDINATOR_ADDRESS)."
    ),
    num_processes: int = typer.Option(None, help="Multi-host runs: number of processes (or EGGROLL_NUM_PROCESSES)."),
    process_id: int = typer.Option(None, help="Multi-host runs: this process's id (or EGGROLL_PROCESS_ID)."),
    peer_timeout: float = typer.Option(
        None, help="Multi-host runs: seconds a silent process is waited for before all stop (EGGROLL_PEER_TIMEOUT; 60)."
    ),
) -> None:
    """eggroll: evolution strategies in JAX with low-rank perturbations."""
    env = ("EGGROLL_COORDINATOR", "JAX_COORDINATOR_ADDRESS", "EGGROLL_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    if coordinator or num_processes or process_id is not None or any(os.environ.get(v) for v in env):
        from eggroll import parallel

        try:
            parallel.init_distributed(coordinator, num_processes, process_id, peer_timeout_s=peer_timeout)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        from eggroll.run.checkpoint import interrupt_early

        interrupt_early()  # again: jax.distributed's preemption notifier took SIGTERM over


@app.command()
def demo(
    out: str = common.out_option("runs/demo"),
    generations: int = common.generations_option(400, "generations per strategy"),
    population: int = common.population_option(512, ", even"),
    rank: int = typer.Option(1, help="Rank of the EGGROLL perturbations."),
    seed: int = common.SEED,
    checkpoint_every: int = typer.Option(
        None,
        "--checkpoint-every",
        min=1,
        help="Checkpoint into OUT/checkpoints every K chunks of 20 generations (and on SIGTERM / Ctrl-C); "
        "without it the demo keeps no checkpoints.",
    ),
    resume: bool = common.RESUME,
    resume_from: int | None = common.RESUME_FROM,
    time_budget: float = common.TIME_BUDGET,
    quiet: bool = common.QUIET,
) -> None:
    """Evolve a Flax MLP with EGGROLL (and OpenAI-ES for comparison); save a plot (demo.png) and demo.json."""
    from eggroll.apps import demo as demo_lib

    run_options = common.options(locals(), generations=None, checkpoints=checkpoint_every is not None or resume)
    cfg = common.from_options(demo_lib.DemoConfig, locals(), {"population": "population_size"})
    result = common.execute(lambda: demo_lib.DemoTask(cfg), run_options)
    common.finish(result)


@app.command()
def version() -> None:
    """Print the versions of eggroll and JAX."""
    import jax

    import eggroll

    typer.echo(
        f"eggroll {eggroll.__version__}, jax {jax.__version__}, process {jax.process_index()} of "
        f"{jax.process_count()}, {jax.local_device_count()} local / {jax.device_count()} global devices"
    )


def main() -> None:
    from eggroll.run.checkpoint import interrupt_early

    interrupt_early()
    app()


if __name__ == "__main__":
    main()
