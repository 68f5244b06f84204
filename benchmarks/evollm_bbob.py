"""EvoLLM (SmolLM2-135M-Instruct) vs random search, Gaussian hill climbing and OpenAI-ES on BBOB.

The comparison of Lange, Tian & Tang (2024), on eggroll's COCO-exact BBOB
functions (``eggroll.problems.bbob``): Sphere (f1), Separable Ellipsoid (f2),
Rastrigin (f3) and Rosenbrock (f8), in 2 and 5 dimensions, COCO instance = seed
+ 1, every method with the same evaluation budget (population x generations)
and the same random start in [-4, 4]^D. Reported: best-so-far ``f - f_opt``.

- random search: uniform samples in [-5, 5]^D.
- Gaussian hill climbing: the mean is the best solution so far; samples around
  it with EvoLLM's sigma schedule (exactly EvoLLM with the language model
  replaced by "copy the best line", so the difference isolates the model).
- OpenAI-ES: ``eggroll.open_es`` (antithetic, centered ranks, Adam 0.3,
  sigma 0.3: the best of a 3 x 2 grid on instance 1).
- EvoLLM: ``eggroll.strategies.evollm`` with its defaults and the local JAX
  SmolLM2-135M-Instruct (greedy decoding).

Run::

    python benchmarks/evollm_bbob.py                 # full: ~30-60 min on 2 CPU cores
    python benchmarks/evollm_bbob.py --quick         # 2-D sphere only, 1 seed

Writes ``benchmarks/results/evollm_bbob.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eggroll.apps.evollm import run
from eggroll.problems.bbob import FUNCTION_NAMES, bbob_function
from eggroll.strategies.evollm import evollm, sigma_at
from eggroll.strategies.open_es import open_es

RESULTS = Path(__file__).parent / "results"
METHODS = ["random search", "hill climbing", "OpenAI-ES", "EvoLLM (SmolLM2-135M)"]


def random_search(f, start, key, pop, gens, lower=-5.0, upper=5.0):
    best, curve = np.inf, []
    for _ in range(gens):
        key, sub = jax.random.split(key)
        x = jax.random.uniform(sub, (pop, start.shape[0]), minval=lower, maxval=upper)
        best = min(best, float(jnp.min(f(x))))
        curve.append(best)
    return curve, {}


def hill_climbing(f, start, key, pop, gens, params):
    mean, best, curve = start, np.inf, []  # the start point is not evaluated, as for the other methods
    for g in range(gens):
        key, sub = jax.random.split(key)
        sigma = sigma_at(params, jnp.int32(g))
        x = jnp.clip(mean[None, :] + sigma * jax.random.normal(sub, (pop, start.shape[0])), -5.0, 5.0)
        fx = f(x)
        i = int(jnp.argmin(fx))
        if float(fx[i]) < best:
            best, mean = float(fx[i]), x[i]
        curve.append(best)
    return curve, {}


def openai_es(f, start, key, pop, gens):
    es = open_es(pop, jnp.zeros_like(start), optimizer=optax.adam(0.3), sigma_init=0.3)
    params = es.default_params
    key, sub = jax.random.split(key)
    state = es.init(sub, start, params)
    best, curve = np.inf, []
    for _ in range(gens):
        key, k1, k2 = jax.random.split(key, 3)
        x, state = es.ask(k1, state, params)
        fx = f(jnp.clip(x, -5.0, 5.0))
        best = min(best, float(jnp.min(fx)))
        state, _ = es.tell(k2, x, fx, state, params)
        curve.append(best)
    return curve, {}


def evollm_run(f, start, key, pop, gens, backend):
    es = evollm(pop, start, backend)
    t = time.perf_counter()
    state, hist = run(es, lambda x: f(x[None])[0], key, gens, mean=start)
    return list(hist["best_fitness"]), {
        "parse_failure_rate": float(state.llm_failures) / max(int(state.llm_queries), 1),
        "fallback_rate": float(np.mean(hist["fallback_rate"])),
        "seconds_per_generation": (time.perf_counter() - t) / gens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--functions", default="1,2,3,8")
    parser.add_argument("--dims", default="2,5")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2-D sphere, 1 seed, 10 generations")
    parser.add_argument("--out", default=str(RESULTS / "evollm_bbob"))
    parser.add_argument("--report-only", action="store_true", help="rebuild table and plot from the saved JSON")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="rerun only these (comma-separated); the other methods' runs are kept from the saved JSON, which must "
        "hold the same settings (e.g. --methods OpenAI-ES after a change to open_es)",
    )
    args = parser.parse_args()
    if args.quick:
        args.functions, args.dims, args.seeds, args.generations = "1", "2", 1, 10
    functions = [int(v) for v in args.functions.split(",")]
    dims = [int(v) for v in args.dims.split(",")]
    out = Path(args.out)
    if args.report_only:
        return report(json.loads(out.with_suffix(".json").read_text())["runs"], out, args)
    methods = [m.strip() for m in args.methods.split(",")]
    if not methods or set(methods) - set(METHODS):
        parser.error(f"--methods takes names among {METHODS}, got {args.methods!r}")
    kept = []
    if set(methods) != set(METHODS):
        saved = json.loads(out.with_suffix(".json").read_text())
        same = {k: saved["config"].get(k) for k in ("functions", "dims", "seeds", "population", "generations")}
        if same != {k: getattr(args, k) for k in same}:
            parser.error(f"the saved runs were made with {same}: give the same settings to rerun some methods")
        kept = [r for r in saved["runs"] if r["method"] not in methods]

    from rich.console import Console
    from rich.progress import Progress

    from eggroll.llm.local import LocalBackend

    console = Console()
    backend = LocalBackend()
    if METHODS[-1] in methods:
        t0 = time.perf_counter()
        backend.load()
        console.print(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - t0:.1f} s")
    results = list(kept)
    total = len(functions) * len(dims) * args.seeds * len(methods)
    with Progress(console=console) as progress:
        task = progress.add_task("BBOB runs", total=total)
        for dim in dims:
            for fid in functions:
                for seed in range(args.seeds):
                    f = bbob_function(fid, seed + 1, dim, subtract_fopt=True)
                    key = jax.random.key(1000 * fid + 10 * dim + seed)
                    start = jax.random.uniform(jax.random.fold_in(key, 1), (dim,), minval=-4.0, maxval=4.0)
                    hc_params = evollm(args.population, start, backend).default_params
                    for method in methods:
                        progress.update(task, description=f"f{fid} {dim}-D seed {seed}: {method}")
                        t = time.perf_counter()
                        if method == "random search":
                            curve, extra = random_search(f, start, key, args.population, args.generations)
                        elif method == "hill climbing":
                            curve, extra = hill_climbing(f, start, key, args.population, args.generations, hc_params)
                        elif method == "OpenAI-ES":
                            curve, extra = openai_es(f, start, key, args.population, args.generations)
                        else:
                            curve, extra = evollm_run(f, start, key, args.population, args.generations, backend)
                        results.append(
                            {
                                "function": fid,
                                "name": FUNCTION_NAMES[fid],
                                "dim": dim,
                                "seed": seed,
                                "method": method,
                                "curve": [float(v) for v in curve],
                                "seconds": time.perf_counter() - t,
                                **extra,
                            }
                        )
                        progress.advance(task)
                        last = results[-1]
                        console.print(
                            f"f{fid} D={dim} seed {seed} {method}: best {last['curve'][-1]:.4g} "
                            f"({last['seconds']:.1f} s)",
                            highlight=False,
                        )
                    save(results, out, args)  # partial results survive an interrupted run
    order = {m: i for i, m in enumerate(METHODS)}  # the saved file keeps one order however it was made
    results.sort(key=lambda r: (dims.index(r["dim"]), functions.index(r["function"]), r["seed"], order[r["method"]]))
    save(results, out, args)
    report(results, out, args)


def save(results, out: Path, args) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("report_only", "methods")}
    config["evaluations"] = args.population * args.generations
    out.with_suffix(".json").write_text(json.dumps({"config": config, "runs": results}, indent=1))


def report(results, out: Path, args) -> None:
    """Writes the markdown table and the plot for the (function, dim) pairs present in ``results``."""
    functions = sorted({r["function"] for r in results})
    dims = sorted({r["dim"] for r in results})
    args.seeds = len({r["seed"] for r in results})
    table = summarise(results, functions, dims, args)
    out.with_suffix(".md").write_text(table)
    print(table)
    plot(results, functions, dims, out.with_suffix(".png"), args)
    print(f"wrote {out}.json, .md and .png")


def _median_final(results, fid, dim, method):
    finals = [r["curve"][-1] for r in results if (r["function"], r["dim"], r["method"]) == (fid, dim, method)]
    return float(np.median(finals)), finals


def summarise(results, functions, dims, args) -> str:
    lines = [
        f"Median over {args.seeds} seeds (COCO instances 1-{args.seeds}) of the best f - f_opt after "
        f"{args.population * args.generations} evaluations (population {args.population} x "
        f"{args.generations} generations); lower is better, best per row in bold. "
        "Ratio = EvoLLM / best baseline (< 1: EvoLLM wins).",
        "",
        "| function | D | " + " | ".join(METHODS) + " | ratio | EvoLLM parse failures |",
        "|---|---|" + "---|" * len(METHODS) + "---|---|",
    ]
    wins = 0
    for fid in functions:
        for dim in dims:
            if not any((r["function"], r["dim"]) == (fid, dim) for r in results):
                continue
            medians = {m: _median_final(results, fid, dim, m)[0] for m in METHODS}
            best = min(medians.values())
            cells = [f"**{v:.3g}**" if v == best else f"{v:.3g}" for v in medians.values()]
            evo = medians[METHODS[-1]]
            baseline = min(medians[m] for m in METHODS[:-1])
            wins += evo <= baseline
            ratio = evo / baseline if baseline > 0 else float("inf")
            pf = [
                r["parse_failure_rate"]
                for r in results
                if (r["function"], r["dim"], r["method"]) == (fid, dim, METHODS[-1])
            ]
            name = f"f{fid} {FUNCTION_NAMES[fid]}"
            lines.append(f"| {name} | {dim} | " + " | ".join(cells) + f" | {ratio:.2g} | {np.mean(pf):.1%} |")
    early = max(1, args.generations // 4)
    lines += [
        "",
        f"Early progress: median best f - f_opt after {early * args.population} evaluations ({early} generations).",
        "",
        "| function | D | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for fid in functions:
        for dim in dims:
            runs = [r for r in results if (r["function"], r["dim"]) == (fid, dim)]
            if not runs:
                continue
            medians = [float(np.median([r["curve"][early - 1] for r in runs if r["method"] == m])) for m in METHODS]
            cells = [f"**{v:.3g}**" if v == min(medians) else f"{v:.3g}" for v in medians]
            lines.append(f"| f{fid} {FUNCTION_NAMES[fid]} | {dim} | " + " | ".join(cells) + " |")
    evo_runs = [r for r in results if r["method"] == METHODS[-1]]
    n_problems = len({(r["function"], r["dim"]) for r in results})
    lines += [
        "",
        f"EvoLLM is best or tied on {wins} of {n_problems} problems. Mean parse-failure rate "
        f"{np.mean([r['parse_failure_rate'] for r in evo_runs]):.1%}, blocks that fell back to the best-so-far "
        f"{np.mean([r['fallback_rate'] for r in evo_runs]):.1%}; "
        f"{np.mean([r['seconds_per_generation'] for r in evo_runs]):.2f} s per EvoLLM generation (CPU).",
    ]
    return "\n".join(lines) + "\n"


def plot(results, functions, dims, path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(dims), len(functions), figsize=(3.6 * len(functions), 3.0 * len(dims)), squeeze=False)
    evals = np.arange(1, args.generations + 1) * args.population
    for i, dim in enumerate(dims):
        for j, fid in enumerate(functions):
            ax = axes[i, j]
            if not any((r["function"], r["dim"]) == (fid, dim) for r in results):
                ax.axis("off")
                continue
            for method in METHODS:
                curves = np.array(
                    [r["curve"] for r in results if (r["function"], r["dim"], r["method"]) == (fid, dim, method)]
                )
                curves = np.maximum(curves, 1e-8)
                med = np.median(curves, axis=0)
                ax.plot(evals, med, label=method, lw=2 if method.startswith("EvoLLM") else 1.2)
                ax.fill_between(evals, curves.min(0), curves.max(0), alpha=0.12)
            ax.set_yscale("log")
            ax.set_title(f"f{fid} {FUNCTION_NAMES[fid]}, D={dim}", fontsize=9)
            ax.set_xlabel("evaluations", fontsize=8)
            if j == 0:
                ax.set_ylabel("best f - f_opt (median)", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
