"""``eggroll finetune``: fine-tune a local LLM on a reward task with EGGROLL, no backprop."""

from __future__ import annotations

import dataclasses

import typer

from eggroll.commands import _common as common
from eggroll.run.progress import console

app = typer.Typer(
    cls=common.OneLineErrors, help="Backprop-free fine-tuning of a local LLM (GGUF or Hugging Face dir) with EGGROLL."
)


@app.callback(invoke_without_command=True)
def finetune(
    task: str = typer.Option(
        "length",
        help="length (one sentence of about 10 words: SmolLM2-135M learns it in ~5 minutes on a CPU), format, "
        "countdown, countdown-hard, chain_sum, basic_arithmetic, letter_counting, spell_backward, python (with "
        "--reward), or any reasoning-gym dataset.",
    ),
    model: str = typer.Option(None, help="A .gguf file or a Hugging Face directory; default SmolLM2-135M-Instruct."),
    generations: int = common.generations_option(40),
    population: int = common.population_option(16, ", even"),
    strategy: str = typer.Option(
        "eggroll", help="eggroll (low-rank, members share the weights) or open_es (full-rank OpenAI-ES baseline)."
    ),
    rank: int = typer.Option(1, min=1, help="Rank of the perturbations (eggroll)."),
    sigma: float = typer.Option(
        4e-3, min=0.0, help="Perturbation scale (4e-3 moved SmolLM2-135M; at 1e-3 mirrored members often decode alike)."
    ),
    lr: float = typer.Option(None, help="SGD learning rate on the ES gradient; default 0.5*sigma^2*sqrt(N)."),
    lr_decay: float = typer.Option(
        1.0, help="The learning rate falls linearly to this fraction of --lr by the last generation (1: constant)."
    ),
    prompts: int = typer.Option(4, min=1, help="Distinct prompts per generation."),
    group_size: int = typer.Option(None, help="Members sharing prompts (default population/prompts)."),
    max_new_tokens: int = typer.Option(None, help="Tokens per completion (default: the task's)."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy decoding."),
    layers: str = typer.Option("all", help="Layers that evolve: all, last:K, or e.g. 0,5,20-29."),
    evolve: str = typer.Option("attn,mlp,norm,embed,head", help="Leaf kinds that evolve."),
    eval_every: int = typer.Option(
        10, min=1, help="Evaluate on held-out prompts every K generations (and before the first and after the last)."
    ),
    eval_prompts: int = typer.Option(32, min=1, help="Held-out prompts."),
    export: bool = typer.Option(True, help="Export the result as safetensors (Hugging Face layout)."),
    reward: str = typer.Option(
        None,
        help="file.py:function(completion, prompt) -> float (for --task python; another task: scores its prompts).",
    ),
    seed: int = common.SEED,
    out: str = common.out_option("runs/finetune"),
    checkpoint_every: int | None = common.CHECKPOINT_EVERY,
    resume: bool = common.RESUME,
    resume_from: int | None = common.RESUME_FROM,
    devices: str = common.DEVICES,
    time_budget: float | None = common.TIME_BUDGET,
    quiet: bool = common.QUIET,
) -> None:
    """Fine-tune with EGGROLL and show reward, held-out accuracy and tokens/s as it goes.

    --out (default runs/finetune) receives history.json, finetune.png, export/ (safetensors),
    result.json, metrics/ and checkpoints/ (every one holds the evolved weights).
    """
    import jax

    from eggroll import parallel
    from eggroll.apps.finetune import FinetuneConfig, FinetuneTask

    if jax.process_count() > 1:
        common.fail(
            "eggroll finetune runs on one host (all of its devices with --devices all); multi-host fine-tuning is "
            "not supported yet. Start it without --coordinator / EGGROLL_COORDINATOR."
        )
    common.check_values(locals())
    try:
        renamed = {"lr": "learning_rate", "prompts": "prompts_per_generation", "out": "out_dir"}
        cfg = common.from_options(FinetuneConfig, locals(), renamed, checkpoint_every=checkpoint_every or 0)
        cfg.resolved_group_size()  # an odd population or a group size that does not fit: exit 2 before loading
        options = dataclasses.replace(
            cfg.run_options(quiet=quiet), started=common.STARTED, resume_from=resume_from
        ).validate()
        mesh = parallel.mesh_from_option(devices)
        if mesh is not None:  # before the model is loaded
            parallel.check_population_size(population, mesh.size, antithetic=True)
    except ValueError as err:
        common.fail(err)
    runner = common.execute_result(lambda: FinetuneTask(cfg, mesh=mesh))  # the model and the task: bad ones exit 2
    if not quiet:
        where = f" on {mesh.size} devices" if mesh is not None else ""
        name, kind = ("EGGROLL", f"r={rank}") if strategy == "eggroll" else ("OpenAI-ES", "(full rank)")
        console.print(f"[bold]{name} fine-tuning[/] task={task} N={population} {kind} sigma={sigma}{where} -> {out}")

    def num(x):  # a NaN reward is logged as null
        return float("nan") if x is None else x

    def show(generation: int, row: dict) -> None:
        if not quiet and "eval_reward" in row:
            console.print(
                f"gen {generation:4d}  held-out reward {num(row['eval_reward']):.3f}  accuracy "
                f"{num(row['eval_accuracy']):.1%}  sample: {row['eval_sample'][:80]!r}"
            )

    result = common.execute(lambda: runner, options, callback=show)
    record = result.record  # the base model's evaluation (generation 0) and the last one
    console.print(
        f"[bold]held-out reward[/] {num(record['base_eval_reward']):.3f} -> {num(record['eval_reward']):.3f}, "
        f"accuracy {num(record['base_eval_accuracy']):.1%} -> {num(record['eval_accuracy']):.1%} "
        f"(generation 0 -> {record['eval_generation']})"
    )
    common.finish(result)
