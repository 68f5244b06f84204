"""Backprop-free fine-tuning of a pretrained LLM with EGGROLL.

Each generation: the strategy asks for a population of low-rank perturbed
models; every member generates completions for its group's prompts in one
batched pass (:func:`eggroll.models.llama.generate_population`: the base
weights are shared, no per-member weights are formed); the task scores the
completions; rewards are normalised within each group of members that saw the
same prompts; ``tell`` moves the mean. No gradients, no optimizer memory beyond
the mean, any reward.

Use :func:`finetune` from Python or ``eggroll finetune`` from the shell.

References:
    Sarkar et al. "Evolution Strategies at the Hyperscale", arXiv:2511.16652, 2025.
    Qiu et al. "Evolution Strategies at Scale: LLM Fine-Tuning Beyond Reinforcement Learning", 2025.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass
class FinetuneConfig:
    """Settings of a fine-tuning run.

    Attributes:
        task: task name (see :data:`eggroll.problems.tasks.TASKS`) or ``"python"``.
        model: ``.gguf`` file or Hugging Face directory; None = SmolLM2-135M-Instruct.
        generations: number of ES generations.
        population: members per generation (even: antithetic pairs).
        rank: rank of the low-rank perturbations.
        sigma: perturbation scale.
        learning_rate: SGD step on the ES gradient estimate; None picks
            ``0.5 * sigma**2 * sqrt(population)``, which moves each weight by about
            ``sigma / 2`` per generation.
        prompts_per_generation: distinct prompts per generation.
        group_size: members that share prompts (their rewards are normalised
            together); None = ``population // prompts_per_generation`` (one prompt per
            group). ``group_size = population`` lets every member answer every prompt.
        max_new_tokens: generation budget per completion; None = the task's.
        temperature: 0 for greedy decoding (the usual choice for ES).
        layers: which decoder layers evolve, e.g. ``"all"``, ``"20-29"``, ``"0,5,10"``.
        evolve: comma-separated leaf kinds that evolve: ``attn``, ``mlp``, ``norm``,
            ``embed`` (the embedding, also the tied head), ``head``.
        eval_every: evaluate on held-out prompts every this many generations.
        eval_prompts: number of held-out prompts.
        checkpoint_every: save an orbax checkpoint every this many generations (0: only at the end,
            or when SIGTERM / Ctrl-C stops the run).
        out_dir: where checkpoints, the export, the history and the plot go (None: nothing saved).
        export: write the final weights as a Hugging Face safetensors directory.
        seed: seed of noise and prompt sampling.
        reward: for ``task="python"``: ``"file.py:function"``.
        resume: continue from the newest resume checkpoint in ``out_dir/resume`` (same settings;
            only ``generations``, ``eval_every``, ``eval_prompts``, ``checkpoint_every`` and ``export``
            may change).
    """

    task: str = "countdown"
    model: str | None = None
    generations: int = 50
    population: int = 32
    rank: int = 1
    sigma: float = 4e-3
    learning_rate: float | None = None
    prompts_per_generation: int = 8
    group_size: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.0
    layers: str = "all"
    evolve: str = "attn,mlp,norm,embed,head"
    eval_every: int = 10
    eval_prompts: int = 32
    checkpoint_every: int = 0
    out_dir: str | None = None
    export: bool = True
    seed: int = 0
    reward: str | None = None
    resume: bool = False

    def resolved_group_size(self) -> int:
        g = self.group_size or max(self.population // self.prompts_per_generation, 1)
        if self.population % g:
            raise ValueError(f"group_size={g} must divide population={self.population}")
        if (self.population // g) > self.prompts_per_generation or self.prompts_per_generation % (self.population // g):
            raise ValueError(
                f"prompts_per_generation={self.prompts_per_generation} must be a multiple of the number of "
                f"groups population/group_size={self.population // g}"
            )
        if g % 2:
            raise ValueError(f"group_size={g} must be even (antithetic pairs share prompts)")
        return g

    def resolved_lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 0.5 * self.sigma**2 * math.sqrt(self.population)


def parse_layers(spec: str, n_layers: int) -> set[int]:
    """``"all"``, ``"20-29"``, ``"0,3,5-7"``, ``"last:4"`` -> set of layer indices."""
    spec = spec.strip().lower()
    if spec == "all":
        return set(range(n_layers))
    if spec == "none":
        return set()
    if spec.startswith("last:"):
        k = int(spec[5:])
        return set(range(max(n_layers - k, 0), n_layers))
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        try:
            rng = range(int(lo), int(hi or lo) + 1)
        except ValueError as e:
            raise ValueError(f"bad layer spec {spec!r}: use 'all', 'last:K', or e.g. '0,5,20-29'") from e
        out.update(rng)
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers {sorted(bad)} out of range for a {n_layers}-layer model")
    return out


_KINDS = {
    "attn": {"wq", "wk", "wv", "wo"},
    "mlp": {"w_gate", "w_up", "w_down"},
    "norm": {"attn_norm", "mlp_norm"},
}


def select_leaves(params: dict, layers: str = "all", evolve: str = "attn,mlp,norm,embed,head") -> tuple[dict, dict]:
    """Params split into segments of evolved / frozen layers, and the matching ``trainable`` mask.

    The decoder layers are stacked (one leaf per weight kind), so evolving only
    some layers cuts the stack into consecutive segments
    (:func:`eggroll.models.llama.split_layers`); each segment is evolved or frozen
    as a whole. :func:`eggroll.models.llama.merge_layers` restores the layout.

    Args:
        params: the model params (stacked layers).
        layers: decoder layers that evolve (see :func:`parse_layers`).
        evolve: comma-separated kinds: ``attn``, ``mlp``, ``norm`` (layer norms and the
            final norm), ``embed``, ``head`` (an untied output head).

    Returns:
        ``(params, mask)``: params with ``"layers"`` as a list of segments, and a
        pytree of bools of the same structure (True = evolves).
    """
    from eggroll.models.llama import merge_layers, split_layers

    kinds = {k.strip() for k in evolve.split(",") if k.strip()}
    unknown = kinds - {"attn", "mlp", "norm", "embed", "head"}
    if unknown:
        raise ValueError(f"unknown leaf kinds {sorted(unknown)}; choose from attn, mlp, norm, embed, head")
    merged = merge_layers(params)
    n_layers = merged["layers"]["wq"].shape[0]
    chosen = parse_layers(layers, n_layers)
    bounds = [i for i in range(1, n_layers) if (i in chosen) != (i - 1 in chosen)]
    split = split_layers(merged, bounds)
    names = set().union(*(_KINDS[k] for k in kinds if k in _KINDS))
    seg_masks, start = [], 0
    for seg in split["layers"]:
        evolved = start in chosen
        seg_masks.append({n: evolved and n in names for n in seg})
        start += seg["wq"].shape[0]
    mask = {"embed": "embed" in kinds, "layers": seg_masks, "norm": "norm" in kinds}
    if "lm_head" in params:
        mask["lm_head"] = "head" in kinds
    return split, mask


@dataclasses.dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        params: the fine-tuned mean params.
        history: one dict per generation (reward mean / max, tokens/s, eval metrics when evaluated).
        evals: ``(generation, eval_reward, eval_accuracy)`` tuples, generation 0 = base model.
        out_dir: where files were written (or None).
        interrupted: the signal that stopped the run early (``"SIGTERM"``, ``"SIGINT"``), else ``""``.
        resumed_from: the checkpoint generation the run continued from (None: a fresh run).
    """

    params: Any
    history: list[dict]
    evals: list[tuple[int, float, float]]
    out_dir: str | None = None
    interrupted: str = ""
    resumed_from: int | None = None


def _encode(tokenizer, task, examples):
    return [tokenizer.encode_prompt(e.prompt, chat=True, system=task.system) for e in examples]


def _width(lengths, multiple: int = 32) -> int:
    return -(-max(lengths) // multiple) * multiple


def _host(tree):
    """NumPy copies (all-gathered when the arrays span several processes)."""
    from eggroll import parallel

    return parallel.to_host(tree)


def _split(x: np.ndarray, mesh) -> Any:
    """A host array placed with its leading (member) axis split over ``mesh`` (any number of processes)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def evaluate_model(config, params, tokenizer, task, examples, max_new_tokens: int, batch_size: int = 32):
    """Greedy completions of ``examples`` by ``params``: (mean reward, accuracy, completions)."""
    from eggroll.models.llama import generate_ids, pad_prompts

    texts = []
    ids_all = _encode(tokenizer, task, examples)
    width = _width([len(x) for x in ids_all])
    for s in range(0, len(ids_all), batch_size):
        chunk = ids_all[s : s + batch_size]
        ids, mask = pad_prompts(chunk, tokenizer.pad_id, multiple=width)
        import jax

        out = generate_ids(
            config,
            params,
            ids,
            mask,
            jax.random.PRNGKey(0),
            max_new_tokens=max_new_tokens,
            stop_ids=tuple(tokenizer.stop_ids),
            pad_id=tokenizer.pad_id,
        )
        toks, lens, done = _host(out)
        texts += [tokenizer.decode(toks[i, : lens[i] - int(done[i])]) for i in range(len(chunk))]
    rewards = task.rewards(texts, examples)
    acc = float(np.mean([task.correct(t, e) for t, e in zip(texts, examples, strict=True)]))
    return float(rewards.mean()), acc, texts


def finetune(
    cfg: FinetuneConfig,
    model: tuple | None = None,
    task: Any = None,
    callback: Callable[[dict], None] | None = None,
    mesh: Any = None,
) -> FinetuneResult:
    """Fine-tune a Llama-family model on a reward task with EGGROLL.

    Args:
        cfg: run settings.
        model: ``(config, params, tokenizer)`` already loaded (else ``cfg.model`` is loaded).
        task: a :class:`~eggroll.problems.tasks.Task` (else ``cfg.task`` is built).
        callback: called with each generation's history record (e.g. for a progress display);
            returning ``True`` stops the run after that generation (a final evaluation
            of the mean is then made if that generation was not evaluated). A resumed run
            first calls it with ``{"generation": g, "resumed_from": g}``.
        mesh: split the population over this device mesh (``None``: one device;
            see :func:`eggroll.parallel.mesh_from_option`). Each device generates
            the completions of its own members with the shared base weights; the
            reward vector is all-gathered and the update is computed replicated.
            Greedy decoding gives the same completions as on one device.

    With ``cfg.out_dir`` the strategy state (mean, optimizer state, noise key),
    the generation, the history and the padding width are saved in
    ``out_dir/resume`` (:class:`eggroll.checkpoint.Checkpointer`, newest two kept)
    every ``cfg.checkpoint_every`` generations, at the end, and when SIGTERM /
    Ctrl-C arrives (the current generation finishes first, then the run ends
    normally: evaluation, files, export). ``cfg.resume`` continues from there
    exactly as if never stopped. The weights alone also go to
    ``out_dir/checkpoints/<generation>`` (see :func:`restore_checkpoint`).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: ``resume`` without ``out_dir``, a fresh run into an ``out_dir``
            that already holds a run, or a checkpoint written with other settings.
        eggroll.checkpoint.CheckpointError: no usable checkpoint to resume from.
    """
    import jax
    import optax

    import eggroll
    from eggroll.checkpoint import Checkpointer, GracefulInterrupt
    from eggroll.models.llama import generate_population, load_model, merge_layers, pad_prompts
    from eggroll.problems.tasks import assign_prompts, make_task

    config, params, tok = model if model is not None else load_model(cfg.model)
    task = task if task is not None else make_task(cfg.task, reward=cfg.reward)
    n, g = cfg.population, cfg.resolved_group_size()
    max_new = cfg.max_new_tokens or task.max_new_tokens
    params, mask = select_leaves(params, cfg.layers, cfg.evolve)
    es = eggroll.eggroll(
        population_size=n,
        solution=params,
        rank=cfg.rank,
        optimizer=optax.sgd(cfg.resolved_lr()),
        fitness_shaping="z_score",
        group_size=g,
        maximize=True,
        trainable=mask,
    )
    es_params = es.default_params.replace(sigma_init=cfg.sigma)
    run_es = es
    if mesh is not None:
        from eggroll import parallel

        run_es = parallel.sharded(es, mesh)  # raises a clear error if the population does not split evenly
        params, es_params = parallel.replicate((params, es_params), mesh)
    state = run_es.init(jax.random.PRNGKey(cfg.seed), params, es_params)
    gen_fn = jax.jit(generate_population, static_argnames=("config", "max_new_tokens", "stop_ids", "pad_id"))
    stop_ids = tuple(tok.stop_ids)
    eval_examples = task.examples(cfg.eval_prompts, seed=10_000_019 + cfg.seed)
    if cfg.resume and not cfg.out_dir:
        raise ValueError("resume needs out_dir (the --out folder of the run to continue)")
    ckpt = None
    if cfg.out_dir:
        os.makedirs(cfg.out_dir, exist_ok=True)
        ckpt = Checkpointer(os.path.join(cfg.out_dir, "resume"), every=cfg.checkpoint_every or None, max_to_keep=2)
        ckpt.refuse_fresh_run(cfg.resume, "a fine-tuning run")

    history: list[dict] = []
    evals: list[tuple[int, float, float]] = []
    width = None

    def run_eval(generation: int, record: dict | None = None):
        r, a, texts = evaluate_model(config, es.get_mean(state), tok, task, eval_examples, max_new)
        evals.append((generation, r, a))
        if record is not None:
            record.update(eval_reward=r, eval_accuracy=a, eval_sample=texts[0])
        return r, a, texts

    def save(gen: int) -> None:
        if ckpt is not None:
            meta = {"generation": gen, "config": _resume_fields(cfg), "history": history, "evals": evals}
            ckpt.save(gen, {"state": state}, {**meta, "width": width})

    first = 1
    if cfg.resume:
        restored, meta = ckpt.restore({"state": state})
        ckpt.check_settings(
            meta.get("config"),
            _resume_fields(cfg),
            may_change="--generations, --eval-every, --eval-prompts, --checkpoint-every, --export and --devices",
        )
        state, width, first = restored["state"], meta["width"], int(meta["generation"]) + 1
        history, evals = list(meta["history"]), [tuple(e) for e in meta["evals"]]
        if callback is not None:
            callback({"generation": first - 1, "resumed_from": first - 1})
    else:
        base_r, base_a, base_texts = run_eval(0)
        if callback is not None:
            callback({"generation": 0, "eval_reward": base_r, "eval_accuracy": base_a, "eval_sample": base_texts[0]})
    gen, interrupted = first - 1, ""
    logger = None
    if cfg.out_dir:
        from eggroll.logging import MetricsLogger

        logger = MetricsLogger(os.path.join(cfg.out_dir, "metrics"))
        logger.truncate(first)  # a resumed run rewrites the generations after its checkpoint
    with GracefulInterrupt() as signals:
        for gen in range(first, cfg.generations + 1):
            t0 = time.perf_counter()
            key = jax.random.PRNGKey(cfg.seed * 1_000_003 + gen)
            population, state = run_es.ask(key, state, es_params)
            examples = task.examples(cfg.prompts_per_generation, seed=cfg.seed * 7919 + gen)
            per_member = assign_prompts(examples, n, g)
            enc = {id(e): ids for e, ids in zip(examples, _encode(tok, task, examples), strict=True)}
            lengths = [len(v) for v in enc.values()]
            width = max(width or 0, _width(lengths))  # grows rarely: few recompilations
            ids, masks = zip(
                *[pad_prompts([enc[id(e)] for e in ex], tok.pad_id, multiple=width) for ex in per_member], strict=True
            )
            ids, masks = np.stack(ids), np.stack(masks)
            if mesh is not None:  # each device holds the prompts of its own members
                ids, masks = _split(ids, mesh), _split(masks, mesh)
            out = gen_fn(
                config,
                population,
                ids,
                masks,
                key,
                cfg.temperature,
                max_new_tokens=max_new,
                stop_ids=stop_ids,
                pad_id=tok.pad_id,
            )
            toks, lens, done = _host(out)
            rewards = np.zeros((n, len(per_member[0])), np.float32)
            correct = 0
            for i in range(n):
                texts = [tok.decode(toks[i, j, : lens[i, j] - int(done[i, j])]) for j in range(toks.shape[1])]
                rewards[i] = task.rewards(texts, per_member[i])
                correct += sum(task.correct(t, e) for t, e in zip(texts, per_member[i], strict=True))
            fitness = rewards.mean(axis=1)
            state, metrics = run_es.tell(key, population, fitness, state, es_params)
            dt = time.perf_counter() - t0
            record = {
                "generation": gen,
                "reward_mean": float(fitness.mean()),
                "reward_max": float(fitness.max()),
                "train_accuracy": correct / rewards.size,
                "tokens": int(lens.sum()),
                "tokens_per_s": float(lens.sum() / dt),
                "seconds": dt,
                "update_norm": float(_host(metrics["update_norm"])),
            }
            if gen % cfg.eval_every == 0 or gen == cfg.generations:
                run_eval(gen, record)
            history.append(record)
            if logger is not None:
                fixed = {"eval_reward": math.nan, "eval_accuracy": math.nan}  # CSV columns; empty if not evaluated
                logger.log(gen, {**fixed, **record, "sigma": float(_host(state.sigma))})
            stop = callback is not None and callback(record) is True
            if signals.requested is not None:
                interrupted, stop = signals.signal_name, True
            if stop:
                if "eval_reward" not in record:
                    run_eval(gen, record)
                break
            if cfg.out_dir and cfg.checkpoint_every and gen % cfg.checkpoint_every == 0:
                save_checkpoint(os.path.join(cfg.out_dir, "checkpoints"), gen, es.get_mean(state))
                save(gen)

    result = FinetuneResult(
        merge_layers(es.get_mean(state)), history, evals, cfg.out_dir, interrupted, first - 1 if cfg.resume else None
    )
    if logger is not None:
        logger.close()
    if ckpt is not None:
        save(gen)  # the end, or the generation SIGTERM / Ctrl-C stopped (no-op if already saved)
        ckpt.close()
    if cfg.out_dir:
        save_checkpoint(os.path.join(cfg.out_dir, "checkpoints"), gen, result.params)
        with open(os.path.join(cfg.out_dir, "history.json"), "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "history": history, "evals": evals}, f, indent=1)
        plot_history(result, os.path.join(cfg.out_dir, "finetune.png"), title=f"EGGROLL fine-tuning: {task.name}")
        if cfg.export:
            from eggroll.models import hf

            hf.save_hf(os.path.join(cfg.out_dir, "export"), config, result.params, tok)
    return result


_NOT_IN_STATE = ("generations", "eval_every", "eval_prompts", "checkpoint_every", "out_dir", "export", "resume")


def _resume_fields(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (JSON)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_STATE}


def save_checkpoint(directory: str, step: int, params: Any) -> str:
    """Save params with orbax under ``directory/<step>``; returns the path."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.path.join(directory, str(step)))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, params, force=True)
    return path


def restore_checkpoint(path: str, like: Any) -> Any:
    """Restore params saved by :func:`save_checkpoint` (``like`` gives structure, shapes and dtypes)."""
    import jax
    import orbax.checkpoint as ocp

    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(os.path.abspath(path), abstract)


def plot_history(result: FinetuneResult, path: str, title: str = "EGGROLL fine-tuning") -> None:
    """Training reward (mean / max over members) and held-out reward / accuracy per generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    gens = [h["generation"] for h in result.history]
    ax1.plot(gens, [h["reward_mean"] for h in result.history], label="population mean")
    ax1.plot(gens, [h["reward_max"] for h in result.history], label="population best", alpha=0.6)
    ax1.set_xlabel("generation")
    ax1.set_ylabel("training reward")
    ax1.legend()
    eg = [e[0] for e in result.evals]
    ax2.plot(eg, [e[1] for e in result.evals], "o-", label="held-out reward")
    ax2.plot(eg, [e[2] for e in result.evals], "s--", label="held-out accuracy")
    ax2.set_xlabel("generation")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
