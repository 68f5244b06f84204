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

app = typer.Typer(
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
    strategy: str = typer.Option("eggroll", help="eggroll (low-rank) or open_es (full-rank OpenAI-ES)."),
    generations: int = typer.Option(50, help="Generations to run (at most)."),
    population: int = typer.Option(256, help="Population size (even)."),
    sigma: float = typer.Option(0.05, help="Perturbation scale."),
    lr: float = typer.Option(0.05, help="Adam learning rate."),
    rank: int = typer.Option(1, help="Rank of EGGROLL's matrix perturbations."),
    hidden: str = typer.Option("32,32", help="Hidden widths of the MLP policy, e.g. 256,256,256."),
    activation: str = typer.Option("tanh", help="Hidden activation (tanh, relu, gelu, silu ...)."),
    rollouts: int = typer.Option(4, help="Episodes per member per generation."),
    horizon: int | None = typer.Option(None, help="Steps per episode (default: the environment's; Brax 1000)."),
    stochastic: bool = typer.Option(False, help="Sample actions during training."),
    normalize_obs: bool = typer.Option(True, help="Running observation normalisation."),
    eval_every: int = typer.Option(5, help="Evaluate the mean policy every N generations."),
    eval_episodes: int = typer.Option(16, help="Episodes per evaluation of the mean policy."),
    target: float | None = typer.Option(None, help="Stop when the evaluated mean policy reaches this return."),
    time_budget: float | None = typer.Option(None, help="Stop after this many seconds (wall clock)."),
    backend: str | None = typer.Option(None, help="Brax physics backend (generalized, positional, spring)."),
    seed: int = typer.Option(0, help="Random seed."),
    out: Path | None = typer.Option(None, help="Output folder (default runs/rl/<env>-<strategy>)."),
    checkpoint_every: int | None = typer.Option(
        None, min=1, help="Save a checkpoint in <out>/checkpoints every K generations (always on SIGTERM/Ctrl-C, end)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint in <out>/checkpoints (same settings)."
    ),
    devices: str = typer.Option(
        "auto",
        help="Split the population over devices: a number, 'all', or 'auto' (1 device; all in a multi-process run).",
    ),
    render: bool = typer.Option(False, "--render", help="Also write a replay of the best policy (GIF / HTML)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Train a policy; save the best mean policy, the learning curve (PNG) and its history."""
    if ctx.invoked_subcommand is not None:
        return
    import jax
    from rich.console import Console

    from eggroll import parallel
    from eggroll.checkpoint import CheckpointError
    from eggroll.rl_train import RLConfig, save_run, train

    console = Console()
    out = out or Path("runs") / "rl" / f"{env}-{strategy}"
    try:
        config = RLConfig(
            env=env,
            strategy=strategy,
            generations=generations,
            population_size=population,
            sigma=sigma,
            learning_rate=lr,
            rank=rank,
            hidden=_hidden(hidden),
            activation=activation,
            num_rollouts=rollouts,
            horizon=horizon,
            stochastic=stochastic,
            normalize_obs=normalize_obs,
            eval_every=eval_every,
            eval_episodes=eval_episodes,
            target_return=target,
            time_budget_s=time_budget,
            backend=backend,
            seed=seed,
        ).validate()
        mesh = parallel.mesh_from_option(devices)
        if mesh is not None:
            console.print(f"population split over {mesh.size} devices ({jax.process_count()} process(es))")
        result = train(
            config,
            progress=not quiet,
            checkpoint_dir=out / "checkpoints",
            checkpoint_every=checkpoint_every,
            resume=resume,
            log_dir=out / "metrics",
            mesh=mesh,
        )
    except (ValueError, CheckpointError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if result.resumed_from is not None:
        console.print(f"resumed from generation {result.resumed_from} ({result.checkpoint_dir})")
    if jax.process_index() != 0:  # multi-process: process 0 writes the files and reports
        raise typer.Exit(143 if result.interrupted == "SIGTERM" else 130 if result.interrupted else 0)
    files = save_run(result, out)
    h = result.history
    steps_per_s = h["env_steps"][-1] / max(sum(h["seconds"][1:]) + result.compile_seconds, 1e-9)
    console.print(
        f"[bold]{env}[/] {strategy}: {len(h['generation'])} generations, best evaluated return "
        f"[green]{result.best_eval_return:.2f}[/], compile {result.compile_seconds:.1f} s, "
        f"{1000 * _median(h['seconds'][1:] or h['seconds']):.0f} ms/generation, {steps_per_s:,.0f} env steps/s"
    )
    for name, path in files.items():
        console.print(f"  {name:8s} {path}")
    console.print(f"  checkpoint {result.checkpoint_dir} (generation {result.generation})")
    if result.interrupted:
        console.print(
            f"[yellow]stopped by {result.interrupted} after generation {result.generation}[/]; checkpoint saved, "
            "continue with the same command plus --resume"
        )
        raise typer.Exit(130 if result.interrupted == "SIGINT" else 143)
    if render:
        console.print(f"  replay   {_replay(out / 'policy.msgpack', out / 'replay', seed)}")


@app.command()
def replay(
    policy: Path = typer.Argument(..., help="A run folder or its policy.msgpack."),
    out: Path | None = typer.Option(None, help="Output file (suffix set to .gif or .html)."),
    seed: int = typer.Option(0, help="Episode seed."),
) -> None:
    """Replay a saved policy for one episode and write it to a file (GIF for gymnax, HTML for Brax)."""
    from rich.console import Console

    console = Console()
    try:
        path = _replay(policy, out or (policy if policy.is_dir() else policy.parent) / "replay", seed, console)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"wrote {path}")


def _replay(policy: Path, out: Path, seed: int, console=None) -> Path:
    import jax

    from eggroll.problems.rl.render import play_episode, render_episode
    from eggroll.rl_train import build, load_policy

    config, params, obs_stats = load_policy(policy)
    fitness, _, _, _ = build(config)
    episode = play_episode(
        fitness.env,
        fitness.policy,
        params,
        obs_stats if config.normalize_obs else None,
        jax.random.key(seed),
        horizon=fitness.horizon,
    )
    if console is not None:
        console.print(f"episode return {episode.total:.2f} over {len(episode.rewards)} steps")
    return render_episode(fitness.env, episode, out)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")
