"""EvoLLM study (issue 17, item 3): SmolLM2-135M as an ES's recombination operator on BBOB, 10 seeds.

Lange, Tian & Tang (2024) report that an LLM used as the recombination operator of an ES
("EvoLLM") beats random search and Gaussian hill climbing on low-dimensional BBOB problems.
This script repeats that comparison at this machine's scale and tests the paper's levers:

- problems: eggroll's COCO-exact BBOB f1 Sphere, f2 Separable Ellipsoid, f3 Rastrigin and
  f8 Rosenbrock in 2 and 5 dimensions, reported seeds 0-9 = COCO instances 1-10, every method
  with the same budget (population 10 x 20 generations = 200 evaluations) and the same random
  start in [-4, 4]^D; score: best-so-far ``f - f_opt`` at 50 evaluations (early) and 200 (final);
- methods: random search (uniform in [-5, 5]^D); Gaussian hill climbing with EvoLLM's own sigma
  schedule (EvoLLM with the model replaced by "copy the best line": the gap isolates the model);
  Gaussian hill climbing with a tuned step-size schedule; OpenAI-ES (``eggroll.open_es``, Adam) and
  CMA-ES (``evosax:CMA_ES`` through the registry), both tuned; EvoLLM (``eggroll.evollm`` with its
  defaults and the local JAX SmolLM2-135M-Instruct, greedy);
- tuning: each tuned baseline's small grid (``GRIDS``) is run on COCO instances 101-102 of the same
  8 problems (never the reported instances); the setting with the lowest mean log10 final
  ``f - f_opt`` is then run on the reported seeds;
- levers (the paper's knobs, each value one row, the rest at the defaults): archive size,
  discretisation resolution and temperature on f1 and f8 in 2-D, block size on f1 and f8 in 5-D,
  with the first ``--lever-seeds`` seeds, run in the order of ``LEVERS`` until ``--deadline``
  (a group that would end after it is skipped and listed), compared pairwise (same instance and
  start) with the default setting's runs from the main table;
- statistics: EvoLLM against each baseline per problem by a two-sided Mann-Whitney U test at 5%
  (win / tie / loss); lever values against the default by a Wilcoxon signed-rank test over the
  pooled (problem, seed) pairs of log10 ``f - f_opt``.

Speed: the seeds (and functions) of one dimension run in lockstep: ``jax.vmap(es.tell)`` sends
every run's prompts to the backend as ONE ``generate`` call per generation (EvoLLM's host call is
batched by ``custom_vmap``), split into power-of-two chunks so no padding rows are computed.
``--part profile`` measures where an unbatched generation's time goes and the lockstep speed-up.

    python benchmarks/evollm_study.py --deadline 00:37 # profile, main table, tuning, levers (about 1 h, 2 cores)
    python benchmarks/evollm_study.py --quick          # smoke run: f1 2-D, 2 seeds, 4 generations
    python benchmarks/evollm_study.py --report-only    # rebuild md and figures from the JSON

Writes ``benchmarks/results/evollm_study.{json,md,png}`` and ``evollm_study_levers.png``. The JSON
is saved after every group, and a rerun with ``--resume`` skips the groups it already holds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eggroll.problems.bbob import FUNCTION_NAMES, bbob_function
from eggroll.strategies import make
from eggroll.strategies.evollm import block_indices, evollm
from eggroll.strategies.open_es import open_es
from eggroll.types import Strategy

RESULTS = Path(__file__).parent / "results"
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"
LOWER, UPPER = -5.0, 5.0
EVO = "EvoLLM (SmolLM2-135M)"
BASELINES = ["random search", "hill climbing, EvoLLM's sigma", "hill climbing, tuned", "OpenAI-ES", "CMA-ES"]
METHODS = BASELINES + [EVO]
TUNE_INSTANCES = (101, 102)
# The tuned baselines' grids (run on TUNE_INSTANCES). Hill climbing: sigma_t = max(s0 * decay^t, 1e-6).
GRIDS: dict[str, list[dict[str, float]]] = {
    "hill climbing, tuned": [
        {"sigma_init": s, "sigma_decay": d} for s in (0.1, 0.3, 1.0, 2.0) for d in (0.8, 0.9, 0.95, 1.0)
    ],
    "OpenAI-ES": [{"learning_rate": lr, "sigma_init": s} for lr in (0.1, 0.3, 1.0) for s in (0.1, 0.3, 1.0)],
    "CMA-ES": [{"sigma_init": s} for s in (0.3, 1.0, 2.0, 3.0)],
}
# Lever values (the default of each is in the main table): (option, value, dims).
LEVERS: list[tuple[str, Any, tuple[int, ...]]] = [  # in the order they run (one value of each lever first)
    ("temperature", 1.0, (2,)),
    ("archive_size", 5, (2,)),
    ("resolution", 100, (2,)),
    ("block_size", 1, (5,)),
    ("archive_size", 20, (2,)),
    ("resolution", 10000, (2,)),
    ("temperature", 0.5, (2,)),
    ("temperature", 2.0, (2,)),
    ("block_size", 2, (5,)),
    ("block_size", 5, (5,)),
]
DEFAULTS = {"temperature": 0.0, "archive_size": 10, "resolution": 1000, "block_size": 4}


# ---------------------------------------------------------------- problems and the lockstep runner


class Run(NamedTuple):
    fid: int
    dim: int
    seed: int
    instance: int


@functools.cache
def problem(run: Run):
    """The run's function (``f - f_opt``), PRNG key and start point (the same for every method)."""
    f = bbob_function(run.fid, run.instance, run.dim, subtract_fopt=True)
    key = jax.random.key(1000 * run.fid + 10 * run.dim + run.seed)
    start = jax.random.uniform(jax.random.fold_in(key, 1), (run.dim,), minval=-4.0, maxval=4.0)
    return f, key, start


def run_lockstep(
    es: Strategy, params: Any, runs: list[Run], gens: int, clip_told: bool = False, label: str | None = None
):
    """Runs every run of one dimension together: vmapped ask / tell, each run's own function.

    Returns ``(curves (R, gens) best-so-far, final vmapped state)``. The population is clipped to the
    bounds for evaluation; ``clip_told`` also tells the clipped points (the hill climbers).
    """
    problems = [problem(r) for r in runs]
    keys = jnp.stack([jax.random.key_data(k) for _, k, _ in problems])
    starts = jnp.stack([s for _, _, s in problems])
    init, ask, tell = vmapped(es)

    def gen_keys(g):
        def one(k):
            sub = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(k), 10 + g))
            return sub[0], sub[1]

        return jax.vmap(one)(keys)

    state = init(
        jax.vmap(lambda k: jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(k), 2)))(keys),
        starts,
        params,
    )
    curves = np.zeros((len(runs), gens))
    best = np.full(len(runs), np.inf)
    t0 = time.perf_counter()
    for g in range(gens):
        k_ask, k_tell = gen_keys(g)
        x, state = ask(k_ask, state, params)
        xc = np.clip(np.asarray(x, np.float32), LOWER, UPPER)
        fx = np.stack([np.asarray(f(xc[i])) for i, (f, _, _) in enumerate(problems)]).astype(np.float32)
        state, _ = tell(k_tell, jnp.asarray(xc) if clip_told else x, jnp.asarray(fx), state, params)
        best = np.minimum(best, np.where(np.isnan(fx), np.inf, fx).min(axis=1))
        curves[:, g] = best
        if label:
            print(f"  {label}: generation {g + 1}/{gens}, {time.perf_counter() - t0:.0f} s", flush=True)
    return curves, state


_VMAPPED: dict[int, tuple[Strategy, Any, Any, Any]] = {}


def vmapped(es: Strategy):
    """Jitted, vmapped ``init / ask / tell`` of a strategy (compiled once per strategy object and shape)."""
    if id(es) not in _VMAPPED or _VMAPPED[id(es)][0] is not es:
        _VMAPPED[id(es)] = (
            es,
            jax.jit(jax.vmap(lambda k, m, p: es.init(jax.random.wrap_key_data(k), m, p), in_axes=(0, 0, None))),
            jax.jit(jax.vmap(lambda k, s, p: es.ask(k, s, p), in_axes=(0, 0, None))),
            jax.jit(jax.vmap(lambda k, x, f, s, p: es.tell(k, x, f, s, p), in_axes=(0, 0, 0, 0, None))),
        )
    return _VMAPPED[id(es)][1:]


class HCState(NamedTuple):
    mean: jax.Array
    best_f: jax.Array
    generation: jax.Array


def hill_climber(pop: int, dim: int) -> Strategy:
    """Gaussian hill climbing: samples around the best point so far; params = (sigma_init, decay, sigma_min)."""

    def init(key, mean, params):
        return HCState(mean, jnp.asarray(jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))

    def ask(key, state, params):
        sigma = jnp.maximum(params[0] * params[1] ** state.generation.astype(jnp.float32), params[2])
        x = state.mean[None, :] + sigma * jax.random.normal(key, (pop, dim))
        return jnp.clip(x, LOWER, UPPER), state

    def tell(key, x, f, state, params):
        f = jnp.where(jnp.isnan(f), jnp.inf, f)
        i = jnp.argmin(f)
        better = f[i] < state.best_f
        return HCState(jnp.where(better, x[i], state.mean), jnp.minimum(f[i], state.best_f), state.generation + 1), {}

    return Strategy(
        init=init,
        ask=ask,
        tell=tell,
        default_params=None,
        population_size=pop,
        name="hill climbing",
        get_mean=lambda state: state.mean,
        materialize=lambda x: x,
    )


def random_search(pop: int, dim: int) -> Strategy:
    def ask(key, state, params):
        return jax.random.uniform(key, (pop, dim), minval=LOWER, maxval=UPPER), state

    return Strategy(
        init=lambda key, mean, params: jnp.zeros(()),
        ask=ask,
        tell=lambda key, x, f, state, params: (state, {}),
        default_params=None,
        population_size=pop,
        name="random search",
        get_mean=lambda state: None,
        materialize=lambda x: x,
    )


def baseline(method: str, setting: dict[str, float], pop: int, dim: int) -> tuple[Strategy, Any, bool]:
    """(strategy, params, clip_told) of a baseline at a setting."""
    if method == "random search":
        return _strategy("random search", pop, dim), None, False
    if method.startswith("hill climbing"):
        params = jnp.asarray([setting["sigma_init"], setting["sigma_decay"], setting.get("sigma_min", 1e-6)])
        return _strategy("hill climbing", pop, dim), params.astype(jnp.float32), True
    if method == "OpenAI-ES":
        es = _strategy("OpenAI-ES", pop, dim, setting["learning_rate"], setting["sigma_init"])
        return es, es.default_params, False
    if method == "CMA-ES":  # one strategy; the step size is a param, so the grid compiles once
        es = _strategy("CMA-ES", pop, dim)
        return es, es.default_params.replace(std_init=jnp.float32(setting["sigma_init"])), False
    raise ValueError(method)


@functools.cache
def _strategy(method: str, pop: int, dim: int, *options: float) -> Strategy:
    if method == "random search":
        return random_search(pop, dim)
    if method == "hill climbing":
        return hill_climber(pop, dim)
    if method == "OpenAI-ES":
        return open_es(pop, jnp.zeros(dim), optimizer=optax.adam(options[0]), sigma_init=options[1])
    return make("evosax:CMA_ES", pop, jnp.zeros(dim))


def evollm_sigma_setting(pop: int, dim: int) -> dict[str, float]:
    p = evollm(pop, jnp.zeros(dim), backend=object()).default_params
    return {"sigma_init": float(p.sigma_init), "sigma_decay": float(p.sigma_decay), "sigma_min": float(p.sigma_min)}


# ---------------------------------------------------------------- the language model


class SplitBatches:
    """Sends a batch as power-of-two chunks of at least 8 rows (40 prompts: 32 + 8), shortest prompts together.

    ``LocalBackend`` pads a batch to the next power of two rows (40 -> 64), and every padding row
    costs a full prefill; chunks cost nothing extra. Prompts are grouped by length so a chunk of
    short prompts is not padded to the longest prompt of the batch. A remainder under 8 is padded
    to 8 here so retries of odd sizes reuse the 8-row programs. Records the time spent in the model.
    """

    def __init__(self, backend, min_rows: int = 8):
        self.backend, self.min_rows = backend, min_rows
        self.name = backend.name
        self.calls = self.prompts = 0
        self.seconds = 0.0

    def generate(self, prompts, **kwargs):
        t = time.perf_counter()
        prompts = list(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first
        seed = kwargs.pop("seed", 0)
        out: list[str] = [""] * len(prompts)
        i = 0
        while i < len(prompts):
            left = len(prompts) - i
            size = max(1 << (left.bit_length() - 1), self.min_rows)
            idx = order[i : i + size]
            chunk = [prompts[k] for k in idx]
            chunk += [chunk[0]] * (size - len(chunk))
            for k, text in zip(idx, self.backend.generate(chunk, seed=seed + i, **kwargs), strict=False):
                out[k] = text
            i += size
        self.calls += 1
        self.prompts += len(prompts)
        self.seconds += time.perf_counter() - t
        return out


def compiled_programs() -> int:
    """Programs the model's generation has compiled so far (one per batch rows x prompt bucket x max_tokens)."""
    from eggroll.models.llama import generate_ids

    return generate_ids._cache_size()


def evollm_group(
    backend: SplitBatches, runs: list[Run], gens: int, pop: int, options: dict[str, Any], label: str = "EvoLLM"
) -> dict:
    """Runs EvoLLM on ``runs`` (one dimension) in lockstep; returns curves and per-run model statistics."""
    dim = runs[0].dim
    es = evollm(pop, jnp.zeros(dim), backend, **options)
    n_blocks = len(block_indices(dim, options.get("block_size", DEFAULTS["block_size"])))
    calls0, prompts0, model0 = backend.calls, backend.prompts, backend.seconds
    programs0 = compiled_programs()
    t = time.perf_counter()
    curves, state = run_lockstep(es, es.default_params, runs, gens, label=label)
    seconds = time.perf_counter() - t
    queries = np.asarray(state.llm_queries)
    return {
        "curves": curves.tolist(),
        "parse_failure_rate": (np.asarray(state.llm_failures) / np.maximum(queries, 1)).tolist(),
        "fallback_rate": (np.asarray(state.fallbacks) / (gens * n_blocks)).tolist(),
        "seconds": seconds,
        "model_seconds": backend.seconds - model0,
        "backend_calls": backend.calls - calls0,
        "prompts": backend.prompts - prompts0,
        "new_compiled_programs": compiled_programs() - programs0,
        "load_average": os.getloadavg()[0],
    }


# ---------------------------------------------------------------- parts of the study


def runs_of(functions, dims, seeds, instances=None) -> dict[int, list[Run]]:
    """Runs grouped by dimension (seed s -> COCO instance s + 1 unless ``instances`` is given)."""
    out = {}
    for dim in dims:
        out[dim] = [
            Run(fid, dim, s, (instances[j] if instances else s + 1)) for fid in functions for j, s in enumerate(seeds)
        ]
    return out


def part_profile(data: dict, backend_raw, args) -> None:
    """Where a 5-D EvoLLM generation's time goes (full archive), and what lockstep batching saves per run."""
    from eggroll.strategies.evollm import PromptFormat, _build, encode

    out: dict[str, Any] = {}
    dim, pop, n = 5, args.population, 10
    es_one = evollm(pop, jnp.zeros(dim), SplitBatches(backend_raw, min_rows=1))
    params = es_one.default_params
    states, populations, fits = [], [], []
    for seed in range(n):  # a full archive (10 random points of f8, instance seed + 1) at generation 10
        f, key, _ = problem(Run(8, dim, seed, seed + 1))
        xs = jax.random.uniform(jax.random.fold_in(key, 7), (10 + pop, dim), minval=-4.0, maxval=4.0)
        fx = f(xs)
        order = jnp.argsort(fx[:10])
        states.append(
            es_one.init(key, xs[order[0]], params)._replace(
                archive_x=xs[:10], archive_f=fx[:10], best_x=xs[order[0]], best_f=fx[order[0]], generation=jnp.int32(10)
            )
        )
        populations.append(xs[10:])
        fits.append(fx[10:])
    keys = jax.random.split(jax.random.key(0), n)

    def timed(fn, repeats):
        fn()  # compile
        t = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(fn())
        return (time.perf_counter() - t) / repeats

    # one run's generation: ask, the fitness, tell (whose host call holds the model's generate)
    ask = jax.jit(lambda k, st: es_one.ask(k, st, params))
    f0, _, _ = problem(Run(8, dim, 0, 1))
    out["ask_and_fitness_seconds"] = timed(lambda: f0(ask(keys[0], states[0])[0]), 3)
    tell_one = jax.jit(lambda k, x, fx, st: es_one.tell(k, x, fx, st, params)[0].mean)
    out["tell_seconds"] = timed(lambda: tell_one(keys[0], populations[0], fits[0], states[0]), 3)
    # inside the model call: tokenizing, prefill (max_tokens=1) and prefill + decode, the same 2 prompts
    archive_f = np.asarray(states[0].archive_f)
    ints = encode(np.asarray(states[0].archive_x), np.full(dim, LOWER), np.full(dim, UPPER), 1000)
    prompts = [_build(ints[:, b], archive_f, archive_f, PromptFormat()) for b in block_indices(dim, 4)]
    tok = backend_raw.tokenizer
    t = time.perf_counter()
    out["prompt_tokens"] = [len(tok.encode_prompt(p, chat=False, system=None)) for p in prompts]
    out["tokenize_seconds"] = time.perf_counter() - t
    for name, max_tokens in (("prefill_only", 1), ("generate", 17)):
        out[f"{name}_seconds"] = timed(
            lambda m=max_tokens: backend_raw.generate(prompts, max_tokens=m, stop=["\n", "f:"]), 2
        )
    # the same 10 generations in lockstep: one vmapped tell, one batched generate
    many = SplitBatches(backend_raw)
    es_many = evollm(pop, jnp.zeros(dim), many)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    tell_many = jax.jit(jax.vmap(lambda k, x, fx, st: es_many.tell(k, x, fx, st, params)[0].mean))
    batch = (keys, jnp.stack(populations), jnp.stack(fits), stacked)
    out["lockstep_runs"] = n
    out["lockstep_tell_seconds"] = timed(lambda: tell_many(*batch), 2)
    out["lockstep_tell_seconds_per_run"] = out["lockstep_tell_seconds"] / n
    out["speedup_per_run_generation"] = out["tell_seconds"] / out["lockstep_tell_seconds_per_run"]
    out["load_average"] = os.getloadavg()[0]
    data["profile"] = out
    print(json.dumps(out, indent=1))


def part_tune(data: dict, args) -> None:
    """Each tuned baseline's grid on the tuning instances; keeps the best mean log10 final value."""
    tuning = data.setdefault("tuning", {})
    groups = runs_of(args.functions, args.dims, [100 + i for i in range(len(TUNE_INSTANCES))], TUNE_INSTANCES)
    for method, grid in GRIDS.items():
        if method in tuning and args.resume:
            continue
        rows = []
        for setting in grid:
            finals = []
            for dim, runs in groups.items():
                es, params, clip_told = baseline(method, setting, args.population, dim)
                curves, _ = run_lockstep(es, params, runs, args.generations, clip_told)
                finals += curves[:, -1].tolist()
            score = float(np.mean(np.log10(np.maximum(finals, 1e-8))))
            rows.append({"setting": setting, "mean_log10_final": score})
            print(f"tune {method} {setting}: {score:.3f}")
        best = min(rows, key=lambda r: r["mean_log10_final"])
        tuning[method] = {"grid": rows, "best": best["setting"]}
        save(data, args)


def part_baselines(data: dict, args) -> None:
    main = data.setdefault("main", {})
    groups = runs_of(args.functions, args.dims, range(args.seeds))
    for method in BASELINES:
        for dim, runs in groups.items():
            name = f"{method}|{dim}"
            if name in main and args.resume:
                continue
            if method == "hill climbing, EvoLLM's sigma":
                setting = evollm_sigma_setting(args.population, dim)
            elif method in GRIDS:
                setting = data["tuning"][method]["best"]
            else:
                setting = {}
            es, params, clip_told = baseline(method, setting, args.population, dim)
            t = time.perf_counter()
            curves, _ = run_lockstep(es, params, runs, args.generations, clip_told)
            main[name] = {
                "method": method,
                "dim": dim,
                "runs": [r._asdict() for r in runs],
                "setting": setting,
                "curves": curves.tolist(),
                "seconds": time.perf_counter() - t,
            }
            print(f"{method} {dim}-D: {time.perf_counter() - t:.1f} s")
    save(data, args)


def part_evollm(data: dict, backend: SplitBatches, args) -> None:
    main = data.setdefault("main", {})
    for dim, runs in runs_of(args.functions, args.dims, range(args.seeds)).items():
        name = f"{EVO}|{dim}"
        if name in main and args.resume:
            continue
        result = evollm_group(backend, runs, args.generations, args.population, {}, f"EvoLLM {dim}-D")
        main[name] = {"method": EVO, "dim": dim, "runs": [r._asdict() for r in runs], "setting": {}, **result}
        print(
            f"EvoLLM {dim}-D, {len(runs)} runs in lockstep: {result['seconds']:.0f} s "
            f"({result['seconds'] / args.generations:.1f} s per generation, model {result['model_seconds']:.0f} s)"
        )
        save(data, args)


def part_levers(data: dict, backend: SplitBatches, args, deadline: float | None) -> None:
    levers = data.setdefault("levers", {})
    skipped = data.setdefault("levers_skipped", [])
    for option, value, dims in args.lever_plan:
        for dim in dims:
            if dim not in args.dims:
                continue
            name = f"{option}={value}|{dim}"
            if name in levers and args.resume:
                continue
            runs = runs_of(args.lever_functions, [dim], range(args.lever_seeds))[dim]
            if deadline is not None and time.time() + estimate(data, option, value, dim, len(runs), args) > deadline:
                print(f"skip {name}: it would end after the deadline")
                if name not in skipped:
                    skipped.append(name)
                save(data, args)
                continue
            result = evollm_group(backend, runs, args.generations, args.population, {option: value}, name)
            levers[name] = {"option": option, "value": value, "dim": dim, "runs": [r._asdict() for r in runs], **result}
            if name in skipped:
                skipped.remove(name)
            print(f"lever {name}: {result['seconds']:.0f} s")
            save(data, args)


def estimate(data: dict, option: str, value: Any, dim: int, n_runs: int, args) -> float:
    """Seconds a lever group should take, from the main EvoLLM group's time per prompt of that dim."""
    ref = data.get("main", {}).get(f"{EVO}|{dim}")
    if ref is None:
        return 0.0
    per_prompt = ref["seconds"] / max(ref["prompts"], 1)
    blocks = len(block_indices(dim, value if option == "block_size" else DEFAULTS["block_size"]))
    ref_blocks = len(block_indices(dim, DEFAULTS["block_size"]))
    scale = value / DEFAULTS["archive_size"] if option == "archive_size" else 1.0
    if option == "block_size":
        scale = (dim / blocks + 4) / (dim / ref_blocks + 4)  # shorter lines in smaller blocks
    return 20.0 + per_prompt * scale * n_runs * blocks * args.generations


# ---------------------------------------------------------------- statistics and the report


def finals_by_problem(data: dict, at: int) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """{(fid, dim): {method: values over seeds (seed order)}} at generation index ``at``."""
    out: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for entry in data.get("main", {}).values():
        curves = np.asarray(entry["curves"])
        for run, curve in zip(entry["runs"], curves, strict=True):
            out.setdefault((run["fid"], run["dim"]), {}).setdefault(entry["method"], []).append(curve[at])
    return {p: {m: np.asarray(v) for m, v in d.items()} for p, d in out.items()}


def compare(evo: np.ndarray, base: np.ndarray, alpha: float = 0.05) -> tuple[str, float]:
    """'win' / 'tie' / 'loss' of EvoLLM (lower is better) by a two-sided Mann-Whitney U test."""
    from scipy.stats import mannwhitneyu

    if np.array_equal(np.sort(evo), np.sort(base)):
        return "tie", 1.0
    p = float(mannwhitneyu(evo, base, alternative="two-sided").pvalue)
    if p >= alpha:
        return "tie", p
    return ("win" if np.median(evo) < np.median(base) else "loss"), p


def bootstrap_ratio_ci(evo: np.ndarray, base: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(EvoLLM) / median(baseline) (resampling seeds of each)."""
    rng = np.random.default_rng(seed)
    e = np.maximum(evo, 1e-12)[rng.integers(0, len(evo), (n, len(evo)))]
    b = np.maximum(base, 1e-12)[rng.integers(0, len(base), (n, len(base)))]
    ratios = np.median(e, axis=1) / np.median(b, axis=1)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def fmt(v: float) -> str:
    return f"{v:.3g}"


def report(data: dict, out: Path, args) -> None:
    md = summarise(data, args)
    out.with_suffix(".md").write_text(md)
    print(md)
    if data.get("main"):
        plot_main(data, out.with_suffix(".png"), args)
        if out.resolve() == (RESULTS / "evollm_study").resolve():  # the docs page shows the same figure
            shutil.copyfile(out.with_suffix(".png"), DOCS_IMG / "evollm_study.png")
    if data.get("levers"):
        plot_levers(data, out.parent / (out.name + "_levers.png"))
    print(f"wrote {out}.json, .md and the figures")


def summarise(data: dict, args) -> str:
    config = data["config"]
    pop, gens, early = config["population"], config["generations"], config["early_generations"]
    lines = [
        f"# EvoLLM study: SmolLM2-135M as the recombination operator, BBOB, {config['seeds']} seeds",
        "",
        f"Reproduce: `{config['command']}` (written by `benchmarks/evollm_study.py`).",
        "",
    ]
    prof = data.get("profile")
    if prof:
        gen = prof["ask_and_fitness_seconds"] + prof["tell_seconds"]
        lines += [
            "## Where an EvoLLM generation's time goes",
            "",
            f"f8 in 5-D at a full archive (10 lines): 2 prompts (blocks of 3 and 2 coordinates) of "
            f"{' and '.join(str(t) for t in prof['prompt_tokens'])} tokens, 17 new tokens at most, "
            f"load average {prof['load_average']:.1f}.",
            "",
            "| part | seconds | share of the generation |",
            "|---|---:|---:|",
            f"| ask + fitness (JAX) | {prof['ask_and_fitness_seconds']:.4f} | "
            f"{prof['ask_and_fitness_seconds'] / gen:.1%} |",
            f"| tell (archive update, prompts, the model, parsing) | {prof['tell_seconds']:.2f} | "
            f"{prof['tell_seconds'] / gen:.1%} |",
            f"| tokenizing both prompts | {prof['tokenize_seconds']:.4f} | {prof['tokenize_seconds'] / gen:.2%} |",
            f"| the model's `generate` on its own: prefill + decode | {prof['generate_seconds']:.2f} | "
            f"{min(prof['generate_seconds'] / gen, 1):.0%} |",
            f"| of which prefill (`max_tokens=1`) | {prof['prefill_only_seconds']:.2f} | "
            f"{prof['prefill_only_seconds'] / gen:.0%} |",
            f"| of which decode (the rest) | {prof['generate_seconds'] - prof['prefill_only_seconds']:.2f} | "
            f"{(prof['generate_seconds'] - prof['prefill_only_seconds']) / gen:.0%} |",
            "",
            f"The same generation for {prof['lockstep_runs']} seeds in lockstep (`jax.vmap(es.tell)`, one batched "
            f"`generate`): {prof['lockstep_tell_seconds']:.2f} s, "
            f"{prof['lockstep_tell_seconds_per_run']:.2f} s per run: "
            f"**{prof['speedup_per_run_generation']:.1f}x** less time per run-generation than one run alone.",
            "",
        ]
    if data.get("tuning"):
        lines += ["## Baseline tuning (COCO instances 101-102, the same 8 problems)", ""]
        for method, t in data["tuning"].items():
            grid = ", ".join(f"{_setting(r['setting'])}: {r['mean_log10_final']:.2f}" for r in t["grid"])
            lines.append(
                f"- **{method}**: chosen {_setting(t['best'])}. Mean log10 final f - f_opt per setting: {grid}."
            )
        lines.append("")
    main = data.get("main", {})
    if any(e["method"] == EVO for e in main.values()):
        lines += table_section(data, gens - 1, f"Final: best f - f_opt after {pop * gens} evaluations", args)
        lines += table_section(data, early - 1, f"Early: best f - f_opt after {pop * early} evaluations", args)
        evo_entries = [e for e in main.values() if e["method"] == EVO]
        pf = np.mean([v for e in evo_entries for v in e["parse_failure_rate"]])
        fb = np.mean([v for e in evo_entries for v in e["fallback_rate"]])
        lines += [
            f"EvoLLM: mean parse-failure rate {pf:.1%}, blocks that fell back to the best-so-far {fb:.1%}. "
            + "; ".join(
                f"{e['dim']}-D: {len(e['runs'])} runs in lockstep, {e['seconds'] / gens:.1f} s per generation "
                f"({e['seconds'] / gens / len(e['runs']):.2f} s per run-generation, "
                f"{e['model_seconds'] / e['seconds']:.0%} in the model, {e['backend_calls']} backend calls, "
                f"{e['new_compiled_programs']} newly compiled generation programs, "
                f"load average {e['load_average']:.1f})"
                for e in sorted(evo_entries, key=lambda e: e["dim"])
            )
            + ".",
            "",
        ]
    if data.get("levers") or data.get("levers_skipped"):
        lines += lever_section(data, args)
    return "\n".join(lines) + "\n"


def _setting(s: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in s.items()) if s else "-"


def table_section(data: dict, at: int, title: str, args) -> list[str]:
    per = finals_by_problem(data, at)
    problems = sorted((p for p in per if EVO in per[p]), key=lambda p: (p[1], p[0]))
    n_seeds = len(per[problems[0]][EVO])
    lines = [
        f"## {title}",
        "",
        f"Median over {n_seeds} seeds (COCO instances 1-{n_seeds}); lower is better, best per row in bold. "
        "Letters after a baseline: EvoLLM's result against it by a two-sided Mann-Whitney U test at 5% "
        "(W: EvoLLM significantly lower, L: significantly higher, none: no significant difference). "
        "Ratio: EvoLLM's median / the best baseline median, with a 95% bootstrap interval.",
        "",
        "| problem | " + " | ".join(METHODS) + " | ratio (95% CI) |",
        "|---|" + "---:|" * len(METHODS) + "---|",
    ]
    tally = {m: {"win": 0, "tie": 0, "loss": 0} for m in BASELINES}
    lowest = 0
    for p in problems:
        vals = per[p]
        medians = {m: float(np.median(vals[m])) for m in METHODS if m in vals}
        low = min(medians.values())
        cells = []
        for m in METHODS:
            if m not in medians:
                cells.append("")
                continue
            cell = f"**{fmt(medians[m])}**" if medians[m] == low else fmt(medians[m])
            if m != EVO:
                outcome, _ = compare(vals[EVO], vals[m])
                tally[m][outcome] += 1
                cell += {"win": " W", "loss": " L", "tie": ""}[outcome]
            cells.append(cell)
        best_base = min((m for m in BASELINES if m in medians), key=lambda m: medians[m])
        lowest += medians[EVO] <= medians[best_base]
        lo, hi = bootstrap_ratio_ci(vals[EVO], vals[best_base])
        ratio = max(medians[EVO], 1e-12) / max(medians[best_base], 1e-12)
        lines.append(
            f"| f{p[0]} {FUNCTION_NAMES[p[0]]}, {p[1]}-D | "
            + " | ".join(cells)
            + f" | {ratio:.2g} ({lo:.2g}-{hi:.2g}) |"
        )
    lines += [
        "",
        "EvoLLM against each baseline over the "
        f"{len(problems)} problems (wins / ties / losses): "
        + "; ".join(f"{m} {t['win']} / {t['tie']} / {t['loss']}" for m, t in tally.items())
        + f". EvoLLM has the lowest median on {lowest} of {len(problems)} problems.",
        "",
    ]
    return lines


def lever_rows(data: dict, at: int):
    """Per lever value: per problem medians and the pooled pairs (log10 lever - log10 default)."""
    default = finals_by_problem(data, at)
    rows = []
    for name, entry in data.get("levers", {}).items():
        curves = np.asarray(entry["curves"])
        per_problem: dict[tuple[int, int], list[float]] = {}
        diffs = []
        for run, curve in zip(entry["runs"], curves, strict=True):
            p = (run["fid"], run["dim"])
            per_problem.setdefault(p, []).append(curve[at])
            ref = default[p][EVO][run["seed"]]
            diffs.append(np.log10(max(curve[at], 1e-8)) - np.log10(max(ref, 1e-8)))
        rows.append((name, entry, per_problem, np.asarray(diffs)))
    return rows


def lever_section(data: dict, args) -> list[str]:
    from scipy.stats import wilcoxon

    config = data["config"]
    gens, early, pop = config["generations"], config["early_generations"], config["population"]
    present = {(r["fid"], r["dim"]) for e in data.get("levers", {}).values() for r in e["runs"]}
    problems = sorted(present, key=lambda p: (p[1], p[0]))
    n_seeds = config["lever_seeds"]
    lines = [
        "## The paper's levers on the tiny model",
        "",
        "Archive size, resolution and temperature on f1 and f8 in 2-D, block size on f1 and f8 in 5-D (where the "
        f"default 4 gives blocks of 3 and 2 coordinates), seeds 0-{n_seeds - 1} (COCO instances 1-{n_seeds}); one "
        f"lever changed at a time from the defaults ({_setting(DEFAULTS)}). Cells: median final best f - f_opt "
        f"after {pop * gens} evaluations. Pairs: each run against the default setting's run on the same "
        "instance and start; 'better / worse' counts pairs with a lower / higher final value; "
        "the log10 change is the median over pairs (negative: the lever helps); p: Wilcoxon signed-rank over "
        "the pairs. Early: the same median log10 change after "
        f"{pop * early} evaluations.",
        "",
        "| setting | "
        + " | ".join(f"f{f} {d}-D" for f, d in problems)
        + " | better / worse | log10 change (final) | p | log10 change (early) | parse failures |",
        "|---|" + "---:|" * len(problems) + "---|---:|---:|---:|---:|",
    ]
    default = finals_by_problem(data, gens - 1)
    cells = []
    for p in problems:
        vals = default.get(p, {}).get(EVO)
        cells.append(fmt(float(np.median(vals[:n_seeds]))) if vals is not None else "")
    lines.append(f"| defaults ({_setting(DEFAULTS)}) | " + " | ".join(cells) + " | | | | | |")
    early_rows = {name: diffs for name, _, _, diffs in lever_rows(data, early - 1)}
    merged: dict[str, dict] = {}
    for name, entry, per_problem, diffs in lever_rows(data, gens - 1):
        label = name.split("|")[0].replace("_", " ").replace("=", " ")
        m = merged.setdefault(label, {"per": {}, "diffs": [], "early": [], "pf": []})
        m["per"].update(per_problem)
        m["diffs"] += diffs.tolist()
        m["early"] += early_rows[name].tolist()
        m["pf"] += entry["parse_failure_rate"]
    for label, m in merged.items():
        cells = [fmt(float(np.median(m["per"][p]))) if p in m["per"] else "" for p in problems]
        diffs = np.asarray(m["diffs"])
        p_value = float(wilcoxon(diffs).pvalue) if np.any(diffs != 0) else 1.0
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {int((diffs < 0).sum())} / {int((diffs > 0).sum())} | "
            f"{np.median(diffs):+.2f} | {p_value:.2g} | {np.median(m['early']):+.2f} | {np.mean(m['pf']):.1%} |"
        )
    if n_seeds < config["seeds"]:
        lines += [
            "",
            f"The levers use {n_seeds} seeds, not the main table's {config['seeds']}: cut to fit the study into "
            "its CPU window (2 cores); with so few pairs per problem only large effects can reach significance.",
        ]
    if data.get("levers_skipped"):
        lines += ["", "Not run (the study's time budget ran out first): " + ", ".join(data["levers_skipped"]) + "."]
    lines.append("")
    return lines


def plot_main(data: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = data["config"]
    pop, gens = config["population"], config["generations"]
    curves: dict[tuple[int, int], dict[str, list]] = {}
    for entry in data["main"].values():
        for run, c in zip(entry["runs"], entry["curves"], strict=True):
            curves.setdefault((run["fid"], run["dim"]), {}).setdefault(entry["method"], []).append(c)
    dims = sorted({d for _, d in curves})
    fids = sorted({f for f, _ in curves})
    fig, axes = plt.subplots(len(dims), len(fids), figsize=(3.6 * len(fids), 3.0 * len(dims)), squeeze=False)
    evals = np.arange(1, gens + 1) * pop
    for i, dim in enumerate(dims):
        for j, fid in enumerate(fids):
            ax = axes[i, j]
            for method in METHODS:
                c = curves.get((fid, dim), {}).get(method)
                if c is None:
                    continue
                c = np.maximum(np.asarray(c), 1e-8)
                ax.plot(evals, np.median(c, 0), label=method, lw=2.2 if method == EVO else 1.1)
                ax.fill_between(evals, np.quantile(c, 0.25, 0), np.quantile(c, 0.75, 0), alpha=0.1)
            ax.axvline(config["early_generations"] * pop, color="grey", lw=0.6, ls=":")
            ax.set_yscale("log")
            ax.set_title(f"f{fid} {FUNCTION_NAMES[fid]}, D={dim}", fontsize=9)
            ax.set_xlabel("evaluations", fontsize=8)
            if j == 0:
                ax.set_ylabel("best f - f_opt (median, IQR)", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_levers(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = data["config"]
    final = {n: d for n, _, _, d in lever_rows(data, config["generations"] - 1)}
    early = {n: d for n, _, _, d in lever_rows(data, config["early_generations"] - 1)}
    names = list(final)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y - 0.18, [np.median(final[n]) for n in names], height=0.35, label="final (200 evaluations)")
    ax.barh(y + 0.18, [np.median(early[n]) for n in names], height=0.35, label="early (50 evaluations)")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [n.replace("|", ", ") + "-D" for n in names], fontsize=7)
    ax.set_xlabel("median log10(f - f_opt) change against the defaults (negative: the lever helps)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def parse_plan(text: str) -> list[tuple[str, Any, tuple[int, ...]]]:
    """``'temperature=1.0@2,block_size=1@5'`` -> ``[("temperature", 1.0, (2,)), ("block_size", 1, (5,))]``."""
    plan = []
    for item in text.split(","):
        setting, dims = item.split("@")
        option, value = setting.split("=")
        if option not in DEFAULTS:
            raise SystemExit(f"unknown lever {option!r}; choose from {sorted(DEFAULTS)}")
        plan.append((option, type(DEFAULTS[option])(value), tuple(int(d) for d in dims.split("+"))))
    return plan


def save(data: dict, args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out.with_suffix(".json"))  # atomic: an interrupted run never leaves half a file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", help="comma list of profile,tune,baselines,evollm,levers or 'all'")
    parser.add_argument("--functions", default="1,2,3,8")
    parser.add_argument("--dims", default="2,5")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--early-generations", type=int, default=5)
    parser.add_argument("--lever-functions", default="1,8")
    parser.add_argument("--lever-seeds", type=int, default=4)
    parser.add_argument(
        "--lever-plan",
        default=None,
        help="lever groups in the order to run, e.g. 'temperature=1.0@2,block_size=1@5' (default: LEVERS)",
    )
    parser.add_argument("--length-bucket", type=int, default=32, help="LocalBackend's prompt-length bucket (tokens)")
    parser.add_argument("--deadline", default=None, help="UTC time HH:MM after which no lever group starts to end")
    parser.add_argument("--resume", action="store_true", help="keep the groups already in the JSON")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: f1 2-D, 2 seeds, 4 generations, one lever, no profile"
    )
    parser.add_argument("--out", default=str(RESULTS / "evollm_study"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.functions, args.dims, args.seeds, args.generations, args.early_generations = "1", "2", 2, 4, 2
        args.lever_functions, args.lever_seeds = "1", 2
        args.out = str(Path(tempfile.gettempdir()) / "evollm_study_quick")
    args.functions = [int(v) for v in str(args.functions).split(",")]
    args.dims = [int(v) for v in str(args.dims).split(",")]
    args.lever_functions = [int(v) for v in str(args.lever_functions).split(",")]
    args.lever_plan = parse_plan(args.lever_plan) if args.lever_plan else (LEVERS[:1] if args.quick else LEVERS)
    out = Path(args.out)
    if args.report_only:
        return report(json.loads(out.with_suffix(".json").read_text()), out, args)
    data = json.loads(out.with_suffix(".json").read_text()) if args.resume and out.with_suffix(".json").exists() else {}
    data["config"] = {
        "population": args.population,
        "generations": args.generations,
        "early_generations": args.early_generations,
        "functions": args.functions,
        "dims": args.dims,
        "seeds": args.seeds,
        "lever_functions": args.lever_functions,
        "lever_seeds": args.lever_seeds,
        "length_bucket": args.length_bucket,
        "command": "python benchmarks/evollm_study.py" + (" --quick" if args.quick else ""),
    }
    parts = {"profile", "tune", "baselines", "evollm", "levers"} if args.part == "all" else set(args.part.split(","))
    if args.quick and args.part == "all":
        parts.discard("profile")  # the profile runs 10 seeds in 5-D: minutes
    deadline = None
    if args.deadline:
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        hh, mm = (int(v) for v in args.deadline.split(":"))
        end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if end < now - dt.timedelta(hours=12):
            end += dt.timedelta(days=1)
        deadline = end.timestamp()
    jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "eggroll-jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    t0 = time.perf_counter()
    backend = None
    if parts & {"profile", "evollm", "levers"}:
        from eggroll.llm.local import LocalBackend

        raw = LocalBackend(length_bucket=args.length_bucket)
        raw.load()
        backend = SplitBatches(raw)
        if "profile" in parts and not (args.resume and "profile" in data):
            part_profile(data, raw, args)
            save(data, args)
        if "evollm" in parts:
            part_evollm(data, backend, args)
    if "tune" in parts:
        part_tune(data, args)
    if "baselines" in parts:
        part_baselines(data, args)
    print(f"profile, EvoLLM main table and baselines done after {time.perf_counter() - t0:.0f} s")
    if "levers" in parts and backend is not None:
        part_levers(data, backend, args, deadline)
    data["seconds"] = data.get("seconds", 0.0) + time.perf_counter() - t0
    save(data, args)
    report(data, out, args)


if __name__ == "__main__":
    main()
