"""Backprop-free fine-tuning of a pretrained LLM with EGGROLL.

Each generation: the strategy asks for a population of low-rank perturbed
models; every member generates completions for its group's prompts in one
batched pass (:func:`eggroll.models.llama.generate_population`: the base
weights are shared, no per-member weights are formed); the task scores the
completions; rewards are normalised within each group of members that saw the
same prompts; ``tell`` moves the mean. No gradients, no optimizer memory beyond
the mean, any reward.

:class:`FinetuneTask` is what ``eggroll finetune`` runs through the one run
loop (:func:`eggroll.run.loop.run`): it evaluates the mean greedily on
held-out prompts before the first generation, every ``eval_every`` generations
and after the last, and at the end writes ``history.json``, ``finetune.png``
and the safetensors export into the run's folder. The loop's checkpoints
(``<out>/checkpoints/<generation>``) hold the strategy state, so the evolved
weights of every checkpoint can be read back with :func:`restore_checkpoint`.
From Python use :func:`finetune` (``eggroll.finetune`` is the old name of this module).

References:
    Sarkar et al. "Evolution Strategies at the Hyperscale", arXiv:2511.16652, 2025.
    Qiu et al. "Evolution Strategies at Scale: LLM Fine-Tuning Beyond Reinforcement Learning", 2025.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import eggroll
from eggroll import parallel
from eggroll.models.io import hf, load_model
from eggroll.models.llama import generate_ids, generate_population, merge_layers, pad_prompts, split_layers
from eggroll.problems.tasks import assign_prompts, make_task
from eggroll.run.loop import RunOptions, RunResult, Task, run, write_json

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "FinetuneTask",
    "evaluate_model",
    "finetune",
    "parse_layers",
    "plot_history",
    "restore_checkpoint",
    "save_checkpoint",
    "select_leaves",
]

STRATEGIES = ("eggroll", "open_es")  # low-rank EGGROLL, or the full-rank OpenAI-ES baseline
KEEP_ALL = 1_000_000  # checkpoints kept: every one (each holds the evolved weights of its generation)


@dataclasses.dataclass
class FinetuneConfig:
    """Settings of a fine-tuning run.

    Attributes:
        task: task name (see :data:`eggroll.problems.tasks.TASKS`) or ``"python"``.
        model: ``.gguf`` file or Hugging Face directory; None = SmolLM2-135M-Instruct.
        generations: number of ES generations.
        population: members per generation (even: antithetic pairs).
        strategy: ``"eggroll"`` (low-rank perturbations; members share the base weights)
            or ``"open_es"`` (full-rank OpenAI-ES: every member is a dense copy of the
            weights, so memory and decoding time grow with the population; the baseline).
        rank: rank of the low-rank perturbations (EGGROLL).
        sigma: perturbation scale.
        learning_rate: SGD step on the ES gradient estimate; None picks
            ``0.5 * sigma**2 * sqrt(population)``, which moves each weight by about
            ``sigma / 2`` per generation.
        lr_decay: the learning rate falls linearly from ``learning_rate`` (generation 1)
            to ``lr_decay * learning_rate`` (generation ``generations``); 1 keeps it
            constant. Z-scored rewards give steps of the same size however close the
            mean is to what the reward asks, so a constant rate keeps moving the
            model once it gets there; a decay lets it settle. A resumed run with a
            decay must keep ``generations``.
        prompts_per_generation: distinct prompts per generation.
        group_size: members that share prompts (their rewards are normalised
            together); None = ``population // prompts_per_generation`` (one prompt per
            group). ``group_size = population`` lets every member answer every prompt.
        max_new_tokens: generation budget per completion; None = the task's.
        temperature: 0 for greedy decoding (the usual choice for ES).
        layers: which decoder layers evolve, e.g. ``"all"``, ``"20-29"``, ``"0,5,10"``.
        evolve: comma-separated leaf kinds that evolve: ``attn``, ``mlp``, ``norm``,
            ``embed`` (the embedding, also the tied head), ``head``.
        eval_every: evaluate on held-out prompts every this many generations (and after the last).
        eval_prompts: number of held-out prompts.
        checkpoint_every: save a checkpoint every this many generations (0: only at the end,
            or when SIGTERM / Ctrl-C stops the run).
        out_dir: the run's folder: checkpoints, metrics, the export, the history and the plot
            (None: nothing saved).
        export: write the final weights as a Hugging Face safetensors directory.
        seed: seed of noise and prompt sampling.
        reward: ``"file.py:function"``, needed for ``task="python"``; with another task, it scores that task's
            prompts (see :func:`eggroll.problems.tasks.make_task`).
        resume: continue from the newest checkpoint in ``out_dir/checkpoints`` (same settings;
            only ``generations``, ``time_budget``, ``eval_every``, ``eval_prompts``,
            ``checkpoint_every`` and ``export`` may change).
        time_budget: seconds; stop early enough that the run (its last evaluation included)
            ends within them (None: no limit).
    """

    task: str = "length"
    model: str | None = None
    generations: int = 40
    population: int = 16
    strategy: str = "eggroll"
    rank: int = 1
    sigma: float = 4e-3
    learning_rate: float | None = None
    lr_decay: float = 1.0
    prompts_per_generation: int = 4
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
    time_budget: float | None = None

    def resolved_group_size(self) -> int:
        """The group size; ``ValueError`` naming what is wrong if the population cannot be split into even groups."""
        if self.population < 2 or self.population % 2:
            raise ValueError(f"--population must be even and >= 2 (antithetic pairs), got {self.population}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"--lr must be > 0 (or left out for 0.5 sigma^2 sqrt(N)), got {self.learning_rate}")
        if not 0.0 <= self.lr_decay <= 1.0:
            raise ValueError(
                f"--lr-decay must be in [0, 1] (the last generation's fraction of --lr), got {self.lr_decay}"
            )
        if self.group_size is not None and self.group_size < 2:
            raise ValueError(f"--group-size must be >= 2 (antithetic pairs share prompts), got {self.group_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not self.sigma > 0:
            raise ValueError(f"--sigma must be > 0, got {self.sigma}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.prompts_per_generation < 1:
            raise ValueError(f"--prompts (prompts_per_generation) must be >= 1, got {self.prompts_per_generation}")
        if self.eval_prompts < 1:
            raise ValueError(f"--eval-prompts must be >= 1 (held-out prompts), got {self.eval_prompts}")
        if not self.temperature >= 0:
            raise ValueError(f"--temperature must be >= 0 (0: greedy decoding), got {self.temperature}")
        n, prompts = self.population, self.prompts_per_generation
        g = self.group_size or max(n // prompts, 1)
        unit = max(1, round(n / (2 * prompts)))
        if self.group_size is None and (n % prompts or g % 2):  # the user set neither: say it in their options
            raise ValueError(
                f"--population {n} with --prompts {prompts} gives groups of {n / prompts:g} members sharing a "
                f"prompt, but each group must be a whole, even number (antithetic pairs share prompts): use a "
                f"--population that is a multiple of 2 x --prompts = {2 * prompts} (e.g. {2 * prompts * unit}), "
                "or set --group-size"
            )
        if n % g:
            raise ValueError(f"--group-size {g} must divide --population {n}")
        if (n // g) > prompts or prompts % (n // g):
            raise ValueError(
                f"--prompts {prompts} must be a multiple of the number of groups --population / --group-size = {n // g}"
            )
        if g % 2:
            raise ValueError(f"--group-size {g} must be even (antithetic pairs share prompts)")
        return g

    def run_options(self, *, quiet: bool = True) -> RunOptions:
        """The run loop's options in these settings (every checkpoint is kept: each holds the evolved weights)."""
        return RunOptions(
            out=self.out_dir,
            generations=self.generations,
            checkpoint_every=self.checkpoint_every or None,
            resume=self.resume,
            time_budget=self.time_budget,
            eval_every=self.eval_every,
            quiet=quiet,
            max_to_keep=KEEP_ALL,
        )

    def resolved_lr(self) -> float:
        return 0.5 * self.sigma**2 * math.sqrt(self.population) if self.learning_rate is None else self.learning_rate

    def optimizer(self) -> optax.GradientTransformation:
        """SGD on the ES gradient, with the learning rate's linear decay (``lr_decay``) over ``generations``."""
        lr = self.resolved_lr()
        if self.lr_decay == 1.0:
            return optax.sgd(lr)
        return optax.sgd(optax.linear_schedule(lr, lr * self.lr_decay, max(self.generations - 1, 1)))


def parse_layers(spec: str, n_layers: int) -> set[int]:
    """``"all"``, ``"20-29"``, ``"0,3,5-7"``, ``"last:4"`` -> set of layer indices."""
    spec = spec.strip().lower()
    if spec == "all":
        return set(range(n_layers))
    if spec == "none":
        return set()
    if spec.startswith("last:"):
        return set(range(max(n_layers - int(spec[5:]), 0), n_layers))
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        try:
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError as e:
            raise ValueError(f"bad layer spec {spec!r}: use 'all', 'last:K', or e.g. '0,5,20-29'") from e
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers {sorted(bad)} out of range for a {n_layers}-layer model")
    return out


_KINDS = {"attn": {"wq", "wk", "wv", "wo"}, "mlp": {"w_gate", "w_up", "w_down"}, "norm": {"attn_norm", "mlp_norm"}}


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
    starts = [0, *bounds]  # each segment's first layer
    seg_masks = [{n: i in chosen and n in names for n in seg} for i, seg in zip(starts, split["layers"], strict=True)]
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
        stopped_by: ``"generations"``, ``"time_budget"``, ``"target"`` (the callback asked to stop),
            ``"SIGTERM"`` or ``"SIGINT"``.
    """

    params: Any
    history: list[dict]
    evals: list[tuple[int, float, float]]
    out_dir: str | None = None
    interrupted: str = ""
    resumed_from: int | None = None
    stopped_by: str = "generations"


def _encode(tokenizer, task, examples):
    return [tokenizer.encode_prompt(e.prompt, chat=True, system=task.system) for e in examples]


def _width(lengths, multiple: int = 32) -> int:
    return -(-max(lengths) // multiple) * multiple


def _split(x: np.ndarray, mesh) -> Any:
    """A host array placed with its leading (member) axis split over ``mesh`` (any number of processes)."""
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def evaluate_model(config, params, tokenizer, task, examples, max_new_tokens: int, batch_size: int = 32):
    """Greedy completions of ``examples`` by ``params``: (mean reward, accuracy, completions)."""
    decoding = {"max_new_tokens": max_new_tokens, "stop_ids": tuple(tokenizer.stop_ids), "pad_id": tokenizer.pad_id}
    texts = []
    ids_all = _encode(tokenizer, task, examples)
    width = _width([len(x) for x in ids_all])
    for s in range(0, len(ids_all), batch_size):
        ids, mask = pad_prompts(ids_all[s : s + batch_size], tokenizer.pad_id, width, config.vocab_size)
        toks, lens, done = parallel.to_host(generate_ids(config, params, ids, mask, jax.random.PRNGKey(0), **decoding))
        texts += [tokenizer.decode(toks[i, : lens[i] - int(done[i])]) for i in range(len(ids))]
    rewards = task.rewards(texts, examples)
    acc = float(np.mean([task.correct(t, e) for t, e in zip(texts, examples, strict=True)]))
    return float(rewards.mean()), acc, texts


# The settings history.json leaves out (they do not shape the result), and those a resumed run may change.
_NOT_RECORDED = ("out_dir", "resume", "checkpoint_every", "time_budget")
_NOT_IN_STATE = (*_NOT_RECORDED, "generations", "eval_every", "eval_prompts", "export")


class FinetuneTask(Task):
    """Fine-tuning as a :class:`eggroll.run.loop.Task` (what ``eggroll finetune`` and :func:`finetune` run).

    The carry is ``{"state": <EGGROLL state>}`` (the mean weights, the optimizer
    state, sigma and the noise key; no best member is kept); generation ``g`` draws its noise key and its
    prompts from the seed and ``g`` alone, and the prompt padding width (which only
    grows) is kept with the checkpoint, so a resumed run computes exactly what an
    uninterrupted one does.

    Args:
        cfg: the run's settings (its run options are read by :meth:`FinetuneConfig.run_options`).
        model: ``(config, params, tokenizer)`` already loaded (else ``cfg.model`` is loaded).
        task: a :class:`~eggroll.problems.tasks.Task` (else ``cfg.task`` is built).
        mesh: split the population over this device mesh (``None``: one device).
        callback: see :func:`finetune`.
    """

    name = "finetune"
    columns = (
        "generation", "reward_mean", "reward_max", "train_accuracy", "tokens", "tokens_per_s", "update_norm", "sigma",
        "eval_reward", "eval_accuracy", "seconds", "generations_per_s", "evaluations_per_s",
    )  # fmt: skip
    may_change = (
        "--generations, --time-budget, --eval-every, --eval-prompts, --checkpoint-every, --export, --devices "
        "and --quiet"
    )

    def __init__(
        self,
        cfg: FinetuneConfig,
        model: tuple | None = None,
        task: Any = None,
        mesh: Any = None,
        callback: Callable[[dict], Any] | None = None,
    ):
        self.cfg, self.mesh, self.callback = cfg, mesh, callback or (lambda record: None)
        self.group_size = cfg.resolved_group_size()
        if cfg.lr_decay != 1.0:  # the schedule spans --generations: a resume must keep them
            self.may_change = self.may_change.replace("--generations, ", "")
        self.reward_task = task if task is not None else make_task(cfg.task, reward=cfg.reward)  # before the model
        self.config, params, self.tok = model if model is not None else load_model(cfg.model)
        self.population_size = cfg.population
        self.max_new = cfg.max_new_tokens or self.reward_task.max_new_tokens
        self._params, mask = select_leaves(params, cfg.layers, cfg.evolve)
        common = dict(
            population_size=cfg.population,
            solution=self._params,
            optimizer=cfg.optimizer(),
            fitness_shaping="z_score",
            group_size=self.group_size,
            maximize=True,
            trainable=mask,
            track_best=False,  # no dense copy of the best member: the mean is the result (half the memory)
        )
        # open_es: N dense members, the full-rank baseline
        self.es = eggroll.open_es(**common) if cfg.strategy == "open_es" else eggroll.eggroll(rank=cfg.rank, **common)
        self.es_params = self.es.default_params.replace(sigma_init=cfg.sigma)
        if mesh is not None:
            self.es = parallel.sharded(self.es, mesh)  # a clear error if the population does not split evenly
            self._params, self.es_params = parallel.replicate((self._params, self.es_params), mesh)
        self._gen_fn = jax.jit(
            generate_population, static_argnames=("config", "max_new_tokens", "stop_ids", "pad_id", "members_per_pass")
        )
        self.decoding = dict(max_new_tokens=self.max_new, stop_ids=tuple(self.tok.stop_ids), pad_id=self.tok.pad_id)
        self.eval_examples = self.reward_task.examples(cfg.eval_prompts, seed=10_000_019 + cfg.seed)
        self.width: int | None = None  # the prompts' padding width; grows rarely (few recompilations)
        self.last_eval: Sequence[float] | None = None  # held-out reward and accuracy of the last evaluation
        self.eval_texts: dict[str, list[str] | None] = {"base": None, "last": None}  # held-out completions
        self.generation = 0
        self._told = -1  # the generation done() last showed the callback
        if mesh is None:  # compile generation 1 now (it reuses it): a population the memory cannot hold is refused
            self._check_fits()

    def _check_fits(self) -> None:
        """Lower and compile the first generation's decoding; refuse it if XLA's buffers exceed the memory."""
        cfg = self.cfg
        key, _, _, ids, mask, _ = self._prompts(1)  # the arrays generation 1 decodes (host arrays: cheap)
        population = jax.eval_shape(self.es.ask, key, jax.eval_shape(self.init)["state"], self.es_params)[0]
        what = f"a generation of {cfg.population} members x {ids.shape[1]} prompts"
        hint = "use a smaller --population or --prompts, fewer --max-new-tokens, or more devices (--devices all)"
        # Dense (OpenAI-ES) members each hold a copy of the weights: decode fewer of them at a time until they fit.
        passes = [cfg.population // k for k in range(1, cfg.population + 1) if cfg.population % k == 0]
        for per_pass in passes if cfg.strategy == "open_es" else passes[:1]:
            if per_pass < cfg.population:
                self.decoding["members_per_pass"] = per_pass
            lowered = self._gen_fn.lower(self.config, population, ids, mask, key, cfg.temperature, **self.decoding)
            try:
                parallel.check_fits(lowered.compile(), what, hint)
                return
            except ValueError:
                if per_pass == passes[-1] or cfg.strategy != "open_es":
                    raise

    def _prompts(self, generation: int, width: int = 0) -> tuple:
        """Generation ``generation``'s noise key and prompts (drawn from the seed and ``generation`` alone), the
        prompts of each member (member ``i`` answers ``examples[rows[i]]``), the members' padded prompt ids and
        mask, and the padding width (at least ``width``)."""
        cfg = self.cfg
        key = jax.random.PRNGKey(cfg.seed * 1_000_003 + generation)
        examples = self.reward_task.examples(cfg.prompts_per_generation, seed=cfg.seed * 7919 + generation)
        encoded = _encode(self.tok, self.reward_task, examples)
        width = max(width, _width([len(ids) for ids in encoded]))
        prompt_ids, prompt_mask = pad_prompts(encoded, self.tok.pad_id, width, self.config.vocab_size)
        rows = np.array(assign_prompts(range(len(examples)), cfg.population, self.group_size))
        return key, examples, rows, prompt_ids[rows], prompt_mask[rows], width

    # ------------------------------------------------------------------ the loop's hooks
    def settings(self) -> dict[str, Any]:
        kept = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in _NOT_IN_STATE}
        if self.cfg.lr_decay != 1.0:  # the schedule spans the run's generations: a resume must keep them
            kept["generations"] = self.cfg.generations
        return kept

    def init(self) -> dict[str, Any]:
        return {"state": self.es.init(jax.random.PRNGKey(self.cfg.seed), self._params, self.es_params)}

    def step(self, carry, generation):
        cfg, tok, task, n = self.cfg, self.tok, self.reward_task, self.cfg.population
        t0 = time.perf_counter()
        key, examples, rows, ids, masks, self.width = self._prompts(generation, self.width or 0)  # width only grows
        population, state = self.es.ask(key, carry["state"], self.es_params)
        if self.mesh is not None:  # each device holds the prompts of its own members
            ids, masks = _split(ids, self.mesh), _split(masks, self.mesh)
        out = self._gen_fn(self.config, population, ids, masks, key, cfg.temperature, **self.decoding)
        toks, lens, done = parallel.to_host(out)
        rewards = np.zeros(rows.shape, np.float32)
        correct = 0
        for i in range(n):
            texts = [tok.decode(toks[i, j, : lens[i, j] - int(done[i, j])]) for j in range(toks.shape[1])]
            member_examples = [examples[k] for k in rows[i]]
            rewards[i] = task.rewards(texts, member_examples)
            correct += sum(task.correct(t, e) for t, e in zip(texts, member_examples, strict=True))
        fitness = rewards.mean(axis=1)
        if cfg.strategy == "open_es":  # regenerate the noise rather than read N dense members back (less memory)
            population = None
        state, metrics = self.es.tell(key, population, fitness, state, self.es_params)
        update_norm, sigma = parallel.to_host((metrics["update_norm"], state.sigma))
        self.generation = generation
        return {"state": state}, {
            "reward_mean": float(fitness.mean()),
            "reward_max": float(fitness.max()),
            "train_accuracy": correct / rewards.size,
            "tokens": int(lens.sum()),
            "tokens_per_s": float(lens.sum() / (time.perf_counter() - t0)),
            "update_norm": float(update_norm),
            "sigma": float(sigma),
        }

    def evaluate(self, carry, generation):
        mean = self.es.get_mean(carry["state"])
        r, a, texts = evaluate_model(self.config, mean, self.tok, self.reward_task, self.eval_examples, self.max_new)
        self.last_eval = (r, a)
        self.eval_texts = {"base": self.eval_texts["base"] or texts, "last": texts}  # base: the first evaluation's
        return carry, {"eval_reward": r, "eval_accuracy": a, "eval_sample": texts[0]}

    def done(self, row) -> bool:
        """The Python callback's wish to stop (the CLI has none)."""
        self._told = row["generation"]
        return self.callback(dict(row)) is True

    def describe(self, row) -> str:
        def num(x, spec=".3f"):
            return "nan" if x is None else format(x, spec)

        if row["generation"] == 0:
            return f"base model: held-out reward {num(row.get('eval_reward'))} / {num(row.get('eval_accuracy'), '.0%')}"
        held = "-" if self.last_eval is None else f"{num(self.last_eval[0])} / {num(self.last_eval[1], '.0%')}"
        return (
            f"reward {num(row.get('reward_mean'))} (max {num(row.get('reward_max'))})  held-out {held}  "
            f"{num(row.get('tokens_per_s'), '.0f')} tok/s"
        )

    def save_extra(self) -> dict[str, Any]:
        extra = {"width": self.width, "last_eval": self.last_eval, "generation": self.generation}
        return {**extra, "eval_texts": self.eval_texts}

    def load_extra(self, extra) -> None:
        self.width, self.last_eval, self.generation = extra["width"], extra["last_eval"], extra["generation"]
        self.eval_texts = extra.get("eval_texts") or self.eval_texts
        self.callback({"generation": self.generation, "resumed_from": self.generation})

    def notify(self, generation: int, row: dict) -> None:
        """The loop's callback: tell the Python callback about the rows :meth:`done` did not show it."""
        if generation != self._told:
            self.callback(dict(row))

    def result(self, run_result: RunResult) -> FinetuneResult:
        """The :class:`FinetuneResult` of a finished (or stopped) run."""
        rows = run_result.history
        return FinetuneResult(
            params=merge_layers(self.es.get_mean(run_result.carry["state"])),
            history=[r for r in rows if r["generation"] > 0],
            evals=[(r["generation"], r["eval_reward"], r["eval_accuracy"]) for r in rows if "eval_reward" in r],
            out_dir=None if run_result.out is None else str(run_result.out),
            interrupted=run_result.interrupted,
            resumed_from=run_result.resumed_from,
            stopped_by=run_result.stopped_by,
        )

    def finish(self, carry, run_result: RunResult) -> dict[str, Any]:
        """Write ``history.json``, ``finetune.png`` and (with ``export``) the safetensors directory."""
        out = Path(run_result.out)
        result = self.result(run_result)
        files = {"history": out / "history.json", "plot": out / "finetune.png", "checkpoints": out / "checkpoints"}
        files["samples"] = out / "samples.md"
        samples = self.samples(result.evals[-1][0])
        write_samples(files["samples"], samples, self.reward_task.name)
        config = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in _NOT_RECORDED}
        write_json(files["history"], {"config": config, "history": result.history, "evals": result.evals})
        plot_history(result, str(files["plot"]), title=f"EGGROLL fine-tuning: {self.reward_task.name}")
        if self.cfg.export:
            files["export"] = out / "export"
            hf.save_hf(str(files["export"]), self.config, result.params, self.tok)
        first, last = result.evals[0], result.evals[-1]
        return {
            "files": {k: str(v) for k, v in files.items()},
            "base_eval_reward": first[1],
            "base_eval_accuracy": first[2],
            "eval_reward": last[1],
            "eval_accuracy": last[2],
            "eval_generation": last[0],
            "samples": samples,
        }

    def samples(self, generation: int, n: int = 8) -> list[dict[str, Any]]:
        """The first ``n`` held-out prompts with the base model's and the last evaluation's completions and rewards."""
        before, after = self.eval_texts["base"], self.eval_texts["last"]
        if before is None or after is None:
            return []
        rows = []
        for e, b, a in zip(self.eval_examples[:n], before, after, strict=False):
            rb, ra = (float(self.reward_task.rewards([t], [e])[0]) for t in (b, a))
            rows.append({"prompt": e.prompt, "base": b, "base_reward": rb, "tuned": a, "tuned_reward": ra})
        return [{**r, "generation": generation} for r in rows]


def write_samples(path, samples: list[dict[str, Any]], task_name: str) -> None:
    """``samples.md``: held-out prompts, the base model's completion and the fine-tuned one, with their rewards."""
    gen = samples[0]["generation"] if samples else 0
    lines = [f"# Held-out samples: {task_name}, base model vs generation {gen}", ""]
    for i, s in enumerate(samples):
        lines += [f"## {i + 1}. {s['prompt']}", ""]
        for who, text, reward in (("base", s["base"], s["base_reward"]), ("tuned", s["tuned"], s["tuned_reward"])):
            quoted = "\n".join("    " + line for line in (text or "(empty)").splitlines() or ["(empty)"])
            lines += [f"{who} (reward {reward:.3f}):", "", quoted, ""]
    Path(path).write_text("\n".join(lines))


def finetune(
    cfg: FinetuneConfig,
    model: tuple | None = None,
    task: Any = None,
    callback: Callable[[dict], Any] | None = None,
    mesh: Any = None,
    *,
    quiet: bool = True,
) -> FinetuneResult:
    """Fine-tune a Llama-family model on a reward task with EGGROLL (through :func:`eggroll.run.loop.run`).

    Args:
        cfg: run settings.
        model: ``(config, params, tokenizer)`` already loaded (else ``cfg.model`` is loaded).
        task: a :class:`~eggroll.problems.tasks.Task` (else ``cfg.task`` is built).
        callback: called with each generation's history record (e.g. for a progress display);
            returning ``True`` stops the run after that generation (a final evaluation
            of the mean is then made if that generation was not evaluated). The base
            model's evaluation is record 0. A resumed run first calls it with
            ``{"generation": g, "resumed_from": g}``.
        mesh: split the population over this device mesh (``None``: one device;
            see :func:`eggroll.parallel.mesh_from_option`). Each device generates
            the completions of its own members with the shared base weights; the
            reward vector is all-gathered and the update is computed replicated.
            Greedy decoding gives the same completions as on one device.
        quiet: no progress display.

    With ``cfg.out_dir`` the loop saves the strategy state (mean, optimizer
    state, noise key), the history and the padding width in
    ``out_dir/checkpoints/<generation>`` every ``cfg.checkpoint_every``
    generations, at the end, and when SIGTERM / Ctrl-C arrives (the current
    generation finishes first; the run then ends without a further evaluation).
    ``cfg.resume`` continues from the newest one exactly as if never stopped.
    :func:`restore_checkpoint` reads the weights of any of them.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: ``resume`` without ``out_dir``, a fresh run into an ``out_dir``
            that already holds a run, or a checkpoint written with other settings.
        eggroll.checkpoint.CheckpointError: no usable checkpoint to resume from.
    """
    runner = FinetuneTask(cfg, model=model, task=task, mesh=mesh, callback=callback)
    return runner.result(run(runner, cfg.run_options(quiet=quiet), callback=runner.notify))


def save_checkpoint(directory: str, step: int, params: Any) -> str:
    """Save params with orbax under ``directory/<step>``; returns the path."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.path.join(directory, str(step)))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, params, force=True)
    return path


def restore_checkpoint(path: str, like: Any) -> Any:
    """The weights in ``path``: a run's checkpoint (``<out>/checkpoints/<generation>``) or a :func:`save_checkpoint`.

    Args:
        path: the folder.
        like: params of the model (structure, shapes and dtypes; e.g. the base model's, stacked layers).

    Returns:
        The weights, laid out like ``like`` (the evolved mean, for a run's checkpoint).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        eggroll.run.checkpoint.CheckpointError: ``path`` is not a readable checkpoint (e.g. a run's folder rather
            than one of its checkpoints, or damaged files).
        ValueError: the weights are not those of the model of ``like`` (another layout, or a leaf of another shape).
    """
    import orbax.checkpoint as ocp

    from eggroll.run.checkpoint import CheckpointError, verify_step

    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    path = os.path.abspath(path)
    items = os.path.join(path, "items")
    hint = "point at a run's <out>/checkpoints/<generation> or at a folder written by save_checkpoint"
    damage = verify_step(path)  # a run's checkpoint carries checksums
    if damage:
        raise CheckpointError(f"checkpoint {path!r} is damaged: {damage}; {hint}")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            if not os.path.isdir(items):  # weights written by save_checkpoint
                weights = ckpt.restore(path)
            else:
                mean = ckpt.restore(items)["carry"]["state"]["mean"]
                layers = mean["layers"]
                if isinstance(layers, dict) and all(k.isdigit() for k in layers):  # segments of a partial selection
                    layers = [layers[k] for k in sorted(layers, key=int)]
                weights = merge_layers({**mean, "layers": layers})
    except Exception as err:  # orbax's missing metadata, truncated JSON or arrays, another run's state...
        raise CheckpointError(f"cannot read checkpoint {path!r} ({type(err).__name__}: {err}); {hint}") from err
    if jax.tree.structure(like) != jax.tree.structure(weights):
        raise ValueError(f"checkpoint {path!r} holds weights of another model layout than `like`")
    for (key, got), want in zip(jax.tree_util.tree_flatten_with_path(weights)[0], jax.tree.leaves(like), strict=True):
        if np.shape(got) != np.shape(want):
            raise ValueError(
                f"checkpoint {path!r} holds {jax.tree_util.keystr(key)} of shape {np.shape(got)}, but `like` has "
                f"{np.shape(want)}: pass the params of the model the checkpoint was written for"
            )
    return jax.tree.map(lambda x, w: np.asarray(x, dtype=w.dtype), weights, like)


def plot_history(result: FinetuneResult, path: str, title: str = "EGGROLL fine-tuning") -> None:
    """Training reward (mean / max over members) and held-out reward / accuracy per generation."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    gens = [h["generation"] for h in result.history]
    ax1.plot(gens, [h["reward_mean"] for h in result.history], label="population mean")
    ax1.plot(gens, [h["reward_max"] for h in result.history], label="population best", alpha=0.6)
    ax1.set(xlabel="generation", ylabel="training reward")
    ax1.legend()
    eg = [e[0] for e in result.evals]
    ax2.plot(eg, [e[1] for e in result.evals], "o-", label="held-out reward")
    ax2.plot(eg, [e[2] for e in result.evals], "s--", label="held-out accuracy")
    ax2.set_xlabel("generation")
    ax2.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
