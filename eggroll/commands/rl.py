"""``eggroll rl``: evolve a policy on a gymnax or Brax environment.

Examples::

    eggroll rl --env CartPole-v1 --strategy eggroll
    eggroll rl --env Pendulum-v1 --generations 100 --render
    eggroll rl --env hopper --population 64 --horizon 200 --backend spring
    eggroll rl --env hopper --generations 500 --checkpoint-every 25      # Ctrl-C / SIGTERM saves too
    eggroll rl --env hopper --generations 500 --checkpoint-every 25 --resume
    eggroll rl --env hopper --population 1024 --devices all        # population split over every GPU
    eggroll rl replay runs/rl/CartPole-v1-eggroll --out cartpole.gif
"""

from __future__ import annotations

from pathlib import Path

import typer

from eggroll.commands import _common as common
from eggroll.run.progress import console

app = typer.Typer(
    cls=common.OneLineErrors,
    help="Evolve an MLP policy on a gymnax (CartPole-v1, Pendulum-v1 ...) or Brax (hopper, ant ...) environment.",
    no_args_is_help=False,
)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.replace("x", ",").split(",") if w.strip())
    except ValueError:
        raise typer.BadParameter(f"--hidden takes widths like '32,32' or '256,256,256', got {text!r}") from None
    if any(w < 1 for w in widths):
        raise typer.BadParameter(f"--hidden widths must be >= 1, got {text!r}")
    return widths


@app.callback(invoke_without_command=True)
def rl(
    ctx: typer.Context,
    env: str = typer.Option("CartPole-v1", help="gymnax id or Brax name (hopper, ant, inverted_pendulum ...)."),
    strategy: str = typer.Option(
        "eggroll",
        help="eggroll (low-rank), open_es (full-rank OpenAI-ES), or an evosax baseline (e.g. evosax:SNES).",
    ),
    generations: int = common.generations_option(50),
    population: int = common.population_option(256, ", even"),
    sigma: float = typer.Option(0.05, help="Perturbation scale."),
    lr: float = typer.Option(0.05, help="Adam learning rate."),
    rank: int = typer.Option(1, help="Rank of EGGROLL's matrix perturbations."),
    hidden: str = typer.Option("32,32", help="Hidden widths of the MLP policy, e.g. 256,256,256."),
    activation: str = typer.Option("tanh", help="Hidden activation (tanh, relu, gelu, silu ...)."),
    rollouts: int = typer.Option(4, help="Episodes per member per generation."),
    horizon: int | None = typer.Option(None, help="Steps per episode (default: the environment's; Brax 1000)."),
    stochastic: bool = typer.Option(False, help="Sample actions during training."),
    normalize_obs: bool = typer.Option(True, help="Running observation normalisation."),
    eval_every: int = typer.Option(5, help="Evaluate the mean policy every N generations (and after the last)."),
    eval_episodes: int = typer.Option(16, help="Episodes per evaluation of the mean policy."),
    target: float | None = typer.Option(None, help="Stop when the evaluated mean policy reaches this return."),
    backend: str | None = typer.Option(None, help="Brax physics backend (generalized, positional, spring)."),
    seed: int = common.SEED,
    out: Path | None = common.out_option(None),
    checkpoint_every: int | None = common.CHECKPOINT_EVERY,
    resume: bool = common.RESUME,
    resume_from: int | None = common.RESUME_FROM,
    devices: str = common.DEVICES,
    time_budget: float | None = common.TIME_BUDGET,
    quiet: bool = common.QUIET,
    render: bool = typer.Option(False, "--render", help="Also write a replay of the best policy (GIF / HTML)."),
) -> None:
    """Train a policy; save the best mean policy, the learning curve (PNG) and its history.

    --out (default runs/rl/<env>-<strategy>) receives policy.msgpack (+ .json), history.json,
    learning_curve.png, result.json, metrics/ and checkpoints/.
    """
    if ctx.invoked_subcommand is not None:
        return
    import jax

    from eggroll import parallel
    from eggroll.apps.rl import RLConfig, RLTask

    out = out or Path("runs") / "rl" / f"{env}-{strategy.replace(':', '-')}"
    hidden = _hidden(hidden)
    run_options = common.options(locals())
    renamed = {"population": "population_size", "lr": "learning_rate", "rollouts": "num_rollouts"}
    renamed.update(target="target_return", time_budget="time_budget_s")
    try:
        config = common.from_options(RLConfig, locals(), renamed).validate()
        mesh = parallel.mesh_from_option(devices)
    except ValueError as err:
        common.fail(err)
    if mesh is not None:
        console.print(f"population split over {mesh.size} devices ({jax.process_count()} process(es))")
    result = common.execute(lambda: RLTask(config, mesh, render), run_options)
    if jax.process_index() != 0:  # multi-process: process 0 writes the files and reports
        raise typer.Exit(result.exit_code)
    rows = [r for r in result.history if r["generation"] > 0 and r.get("seconds") is not None]
    times = sorted(r["seconds"] for r in rows[1:] or rows)
    console.print(
        f"[bold]{env}[/] {strategy}: {result.generation} generations, best evaluated return "
        f"[green]{result.record.get('best_eval_return', float('nan')):.2f}[/], "
        f"{1000 * (times[len(times) // 2] if times else float('nan')):.0f} ms/generation"
    )
    common.finish(result)


@app.command()
def replay(
    policy: Path = typer.Argument(..., help="A run folder or its policy.msgpack."),
    out: Path | None = typer.Option(None, help="Output file (suffix set to .gif or .html)."),
    seed: int = typer.Option(0, help="Episode seed."),
) -> None:
    """Replay a saved policy for one episode and write it to a file (GIF for gymnax, HTML for Brax)."""
    from eggroll.apps.rl import replay_policy

    target = out or (policy if policy.is_dir() else policy.parent) / "replay"
    path = common.execute_result(lambda: replay_policy(policy, target, seed, console.print))
    console.print(f"wrote {path}")
