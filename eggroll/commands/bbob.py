"""``eggroll bbob``: run strategies on COCO's BBOB functions and write tables, an ECDF plot and COCO data.

Examples::

    eggroll bbob --strategies open_es,eggroll,cma_es --functions 1-24 --dims 2,10 --out runs/bbob
    eggroll bbob --dims 2,3,5,10,20,40 --instances 1-15 --budget 10000 --checkpoint-every 20 --out runs/big
    eggroll bbob --dims 2,3,5,10,20,40 --instances 1-15 --budget 10000 --checkpoint-every 20 --out runs/big --resume
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Benchmark evolution strategies on the 24 noiseless COCO BBOB functions (identical to cocoex).",
    no_args_is_help=False,
)


@app.callback(invoke_without_command=True)
def bbob(
    strategies: str = typer.Option(
        "open_es,eggroll,cma_es",
        "--strategies",
        "-s",
        help="Comma-separated: open_es, eggroll, cma_es, evosax_open_es, or evosax:<Class> (e.g. evosax:SNES).",
    ),
    functions: str = typer.Option("1-24", "--functions", "-f", help="Function ids, e.g. '1-24' or '1,8,21'."),
    dims: str = typer.Option("2,10", "--dims", "-d", help="Dimensions (2..40), e.g. '2,5,10'."),
    instances: str = typer.Option("1-5", "--instances", "-i", help="COCO instance ids, e.g. '1-15'."),
    budget: float = typer.Option(1000.0, "--budget", "-b", help="Evaluations per dimension (budget = budget x D)."),
    out: Path = typer.Option(Path("runs/bbob"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Seed for initial means and strategies."),
    x0: str = typer.Option("uniform", "--x0", help="Initial mean: 'uniform' in [-4,4]^D or 'origin'."),
    coco: bool = typer.Option(False, "--coco/--no-coco", help="Also write COCO's data format (for cocopp)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress display."),
    x64: bool = typer.Option(False, "--x64", help="Compute in float64 (slower; float32 is the default)."),
    chunk_generations: int = typer.Option(
        50, "--chunk-generations", min=1, help="Generations per compiled chunk (progress, metrics, checkpoints)."
    ),
    checkpoint_every: int | None = typer.Option(
        None,
        "--checkpoint-every",
        min=1,
        help="Also checkpoint every K chunks into <out>/checkpoints (always: after each (strategy, dim) run, "
        "on SIGTERM/Ctrl-C, at the end).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint in <out>/checkpoints (same settings)."
    ),
) -> None:
    """Run the benchmark and write bbob_results.csv/.md, bbob_runtimes.npz and bbob_ecdf.png into --out.

    Checkpoints go to <out>/checkpoints and one metrics row per chunk to <out>/metrics (metrics.csv/.jsonl).
    """
    from rich.console import Console

    from eggroll.checkpoint import CheckpointError
    from eggroll.problems.bbob.runner import run_benchmark

    console = Console()
    try:
        result = run_benchmark(
            strategies,
            functions=functions,
            dimensions=dims,
            instances=instances,
            budget_multiplier=budget,
            out_dir=out,
            seed=seed,
            x0=x0,
            coco_observer=coco,
            progress=progress,
            x64=x64,
            chunk_generations=chunk_generations,
            checkpoint_dir=out / "checkpoints",
            checkpoint_every=checkpoint_every,
            resume=resume,
            log_dir=out / "metrics",
        )
    except (ValueError, CheckpointError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=2) from None
    if result.resumed_from is not None:
        console.print(f"resumed from step {result.resumed_from} ({result.checkpoint_dir})")
    if result.interrupted:
        console.print(
            f"[yellow]stopped by {result.interrupted} at step {result.step} ({result.stopped_at})[/yellow]; "
            f"checkpoint saved in {result.checkpoint_dir}. Continue with the same command plus --resume."
        )
        raise typer.Exit(130 if result.interrupted == "SIGINT" else 143)
    console.print(f"[bold]{len(result.records)} runs[/bold] written to {out}:")
    for kind, path in result.files.items():
        console.print(f"  {kind:9s} {path}")
    if coco:
        console.print(
            f"  compare with the COCO archive: python -m cocopp {out / 'coco'}/* bbob/2009/BFGS_ros_noiseless"
        )
