"""``eggroll bbob``: run strategies on COCO's BBOB functions and write tables, an ECDF plot and COCO data.

Examples::

    eggroll bbob --strategies open_es,eggroll,cma_es --functions 1-24 --dims 2,10 --out runs/bbob
    eggroll bbob --dims 2,3,5,10,20,40 --instances 1-15 --budget 10000 --checkpoint-every 20 --out runs/big
    eggroll bbob --dims 2,3,5,10,20,40 --instances 1-15 --budget 10000 --checkpoint-every 20 --out runs/big --resume
    eggroll bbob --suite bbob-noisy --functions 101-130 --dims 2,10 --coco --out runs/noisy
    eggroll bbob --suite bbob-largescale --dims 80,160 --strategies eggroll,cma_es --out runs/large
    eggroll bbob --suite bbob-mixint --dims 5,10 --out runs/mixint
"""

from __future__ import annotations

import contextlib

import typer

from eggroll.commands import _common

app = typer.Typer(
    cls=_common.OneLineErrors,
    help="Benchmark evolution strategies on COCO's BBOB suites: bbob, bbob-noisy, bbob-largescale, bbob-mixint "
    "(identical to cocoex).",
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
    suite: str = typer.Option(
        "bbob", "--suite", help="COCO suite: bbob, bbob-noisy (f101-f130), bbob-largescale or bbob-mixint."
    ),
    functions: str | None = typer.Option(
        None, "--functions", "-f", help="Function ids, e.g. '1-24' or '1,8,21' (default: all of the suite's)."
    ),
    dims: str | None = typer.Option(
        None,
        "--dims",
        "-d",
        help="Dimensions, e.g. '2,5,10' (bbob, bbob-noisy: 2..40, default 2,10; bbob-largescale: 20,40,80,160,320,"
        "640, default 20; bbob-mixint: 5,10,20,40,80,160, default 5,10).",
    ),
    instances: str = typer.Option("1-5", "--instances", "-i", help="COCO instance ids, e.g. '1-15'."),
    budget: float = typer.Option(1000.0, "--budget", "-b", help="Evaluations per dimension (budget = budget x D)."),
    out: str = _common.out_option("runs/bbob"),
    generations: int | None = _common.generations_option(None, "chunks"),
    population: int | None = _common.population_option(None, "; default: each strategy's own for the dimension"),
    seed: int = _common.SEED,
    checkpoint_every: int | None = _common.CHECKPOINT_EVERY,
    resume: bool = _common.RESUME,
    resume_from: int | None = _common.RESUME_FROM,
    time_budget: float | None = _common.TIME_BUDGET,
    quiet: bool = _common.QUIET,
    x0: str = typer.Option("uniform", "--x0", help="Initial mean: 'uniform' in [-4,4]^D or 'origin'."),
    coco: bool = typer.Option(False, "--coco/--no-coco", help="Also write COCO's data format (for cocopp)."),
    x64: bool = typer.Option(False, "--x64", help="Compute in float64 (slower; float32 is the default)."),
    chunk_generations: int = typer.Option(
        50, "--chunk-generations", min=1, help="Generations per compiled chunk (the unit of --generations)."
    ),
    out_short: str | None = typer.Option(None, "-o", hidden=True),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", hidden=True),
) -> None:
    """Run the benchmark and write bbob_results.csv/.md, bbob_runtimes.npz and bbob_ecdf.png into --out.

    Generations of the loop are chunks: --generations, --checkpoint-every and the metrics rows in
    <out>/metrics count them over all (strategy, dimension) runs.
    """
    import jax

    from eggroll.apps.bbob import SUITE_DIMENSIONS, BBOBTask, refuse_coco_resume
    from eggroll.run.progress import console

    out = out_short or out
    if suite not in SUITE_DIMENSIONS:
        _common.fail(ValueError(f"unknown --suite {suite!r}: use one of {', '.join(SUITE_DIMENSIONS)}"))
    if dims is None:
        dims = {"bbob-largescale": "20", "bbob-mixint": "5,10"}.get(suite, "2,10")
    run_options, given = _common.options(locals(), quiet=quiet or progress is False), locals()
    renamed = {"dims": "dimensions", "budget": "budget_multiplier", "coco": "coco_observer", "out": "out_dir"}
    with jax.enable_x64(True) if x64 else contextlib.nullcontext():
        _common.execute_result(lambda: refuse_coco_resume(coco, resume))
        result = _common.execute(lambda: _common.from_options(BBOBTask, given, renamed), run_options)
    if result.record.get("stopped_at"):
        console.print(f"stopped at {result.record['stopped_at']}")
    if coco and not result.exit_code:
        reference = " bbob/2009/BFGS_ros_noiseless" if suite == "bbob" else ""
        console.print(f"compare with the COCO archive: python -m cocopp {out}/coco/*{reference}")
    _common.finish(result)
