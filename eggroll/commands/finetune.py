"""``eggroll finetune``: fine-tune a local LLM on a reward task with EGGROLL, no backprop."""

from __future__ import annotations

import typer

app = typer.Typer(help="Backprop-free fine-tuning of a local LLM (GGUF or Hugging Face dir) with EGGROLL.")


@app.callback(invoke_without_command=True)
def finetune(
    task: str = typer.Option(
        "countdown",
        help="countdown, countdown-hard, chain_sum, basic_arithmetic, letter_counting, "
        "spell_backward, format, length, python (with --reward), or any reasoning-gym dataset.",
    ),
    model: str = typer.Option(None, help="A .gguf file or a Hugging Face directory; default SmolLM2-135M-Instruct."),
    generations: int = typer.Option(50, min=1, help="ES generations."),
    population: int = typer.Option(32, min=2, help="Members per generation (even)."),
    rank: int = typer.Option(1, min=1, help="Rank of the perturbations."),
    sigma: float = typer.Option(
        4e-3,
        min=0.0,
        help="Perturbation scale (4e-3 moved SmolLM2-135M; at 1e-3 mirrored members often decode alike).",
    ),
    lr: float = typer.Option(None, help="SGD learning rate on the ES gradient; default 0.5*sigma^2*sqrt(N)."),
    prompts: int = typer.Option(8, min=1, help="Distinct prompts per generation."),
    group_size: int = typer.Option(None, help="Members sharing prompts (default population/prompts)."),
    max_new_tokens: int = typer.Option(None, help="Tokens per completion (default: the task's)."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy decoding."),
    layers: str = typer.Option("all", help="Layers that evolve: all, last:K, or e.g. 0,5,20-29."),
    evolve: str = typer.Option("attn,mlp,norm,embed,head", help="Leaf kinds that evolve."),
    eval_every: int = typer.Option(10, min=1, help="Evaluate on held-out prompts every K generations."),
    eval_prompts: int = typer.Option(32, min=1, help="Held-out prompts."),
    checkpoint_every: int = typer.Option(
        0, min=0, help="Orbax checkpoint every K generations (0: at the end and on SIGTERM/Ctrl-C only)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its newest checkpoint (same settings)."
    ),
    out: str = typer.Option("runs/finetune", help="Output directory (checkpoints, export, history, plot)."),
    export: bool = typer.Option(True, help="Export the result as safetensors (Hugging Face layout)."),
    reward: str = typer.Option(None, help="For --task python: file.py:function(completion, prompt) -> float."),
    seed: int = typer.Option(0, help="Seed of noise and prompt sampling."),
    devices: str = typer.Option(
        "auto", help="Split the population over this host's devices: a number, 'all', or 'auto' (one device)."
    ),
) -> None:
    """Fine-tune with EGGROLL and show reward, held-out accuracy and tokens/s as it goes."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from eggroll.checkpoint import CheckpointError
    from eggroll.finetune import FinetuneConfig
    from eggroll.finetune import finetune as run

    console = Console()
    cfg = FinetuneConfig(
        task=task,
        model=model,
        generations=generations,
        population=population,
        rank=rank,
        sigma=sigma,
        learning_rate=lr,
        prompts_per_generation=prompts,
        group_size=group_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        layers=layers,
        evolve=evolve,
        eval_every=eval_every,
        eval_prompts=eval_prompts,
        checkpoint_every=checkpoint_every,
        out_dir=out,
        export=export,
        seed=seed,
        reward=reward,
        resume=resume,
    )
    try:
        cfg.resolved_group_size()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    import jax

    from eggroll import parallel

    if jax.process_count() > 1:
        console.print(
            "[red]error:[/] eggroll finetune runs on one host (all of its devices with --devices all); "
            "multi-host fine-tuning is not supported yet. Start it without --coordinator / EGGROLL_COORDINATOR."
        )
        raise typer.Exit(2)
    try:
        mesh = parallel.mesh_from_option(devices)
        if mesh is not None:
            parallel.check_population_size(population, mesh.size, antithetic=True)
    except ValueError as e:
        console.print(f"[red]error:[/] --devices {devices}: {e}")
        raise typer.Exit(2) from None
    where = f" on {mesh.size} devices" if mesh is not None else ""
    console.print(f"[bold]EGGROLL fine-tuning[/] task={task} N={population} r={rank} sigma={sigma}{where} -> {out}")
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
    ]
    last_eval = {"r": float("nan"), "a": float("nan")}
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("generations", total=generations, stats="loading model, compiling ...")

        def show(rec: dict) -> None:
            if "resumed_from" in rec:
                progress.update(bar, completed=rec["resumed_from"], stats="resumed, compiling ...")
                progress.console.print(f"resumed from generation {rec['resumed_from']} ({out}/resume)")
                return
            if "eval_reward" in rec:
                last_eval.update(r=rec["eval_reward"], a=rec["eval_accuracy"])
                progress.console.print(
                    f"gen {rec['generation']:4d}  held-out reward {rec['eval_reward']:.3f}  "
                    f"accuracy {rec['eval_accuracy']:.1%}  sample: {rec['eval_sample'][:80]!r}"
                )
            if rec["generation"] == 0:
                return
            progress.update(
                bar,
                advance=1,
                stats=f"reward {rec['reward_mean']:.3f} (max {rec['reward_max']:.3f})  "
                f"held-out {last_eval['r']:.3f} / {last_eval['a']:.0%}  {rec['tokens_per_s']:.0f} tok/s",
            )

        try:
            result = run(cfg, callback=show, mesh=mesh)
        except (ValueError, CheckpointError) as err:
            progress.stop()
            console.print(f"[red]error:[/] {err}")
            raise typer.Exit(2) from None
    (g0, r0, a0), (g1, r1, a1) = result.evals[0], result.evals[-1]
    console.print(
        f"[bold]held-out reward[/] {r0:.3f} -> {r1:.3f}, accuracy {a0:.1%} -> {a1:.1%} (generation {g0} -> {g1})"
    )
    console.print(
        f"wrote {out}/history.json, {out}/finetune.png, {out}/checkpoints/, {out}/resume/"
        + (", export/" if export else "")
    )
    if result.interrupted:
        console.print(
            f"[yellow]stopped by {result.interrupted} after generation {result.history[-1]['generation']}[/]; "
            "checkpoint saved, continue with the same command plus --resume"
        )
        raise typer.Exit(130 if result.interrupted == "SIGINT" else 143)
