"""Benchmark: how close is EGGROLL's low-rank gradient estimate to the full-rank ES one, as the rank grows?

The EGGROLL paper (Sarkar et al. 2025) shows that the low-rank update converges
to the full-rank (Gaussian) ES update at rate O(1/r). Here both estimates are
what the library computes: one ``ask`` / ``evaluate`` / ``tell`` of
``eggroll.eggroll`` (rank r) and of ``eggroll.open_es`` (full rank), with
identity fitness shaping and ``optax.sgd(1)`` so the step of the mean is
exactly minus the estimate ``g = 1/(N sigma) sum_i f_i eps_i``.

Two fixed problems, minimised:

* ``quartic``: one 16 x 16 matrix, ``f(W) = <G, W> + sum W_ij^4 / 4`` (sigma 0.5).
  Its smoothed gradients are known exactly: with perturbation entries of fourth
  moment ``kappa``, ``E[f(W + sigma E) E] / sigma = G + W^3 + kappa sigma^2 W``;
  Gaussian noise has ``kappa = 3``, EGGROLL's ``A B^T / sqrt(r)`` has
  ``kappa = 3 + 6 / r``, so the gap is ``6 sigma^2 W / r``: exactly O(1/r).
* ``mlp``: a real task loss, cross-entropy of a 16 -> 16 (tanh) -> 16 MLP
  predicting the next byte of Python's ``pydoc_data.topics`` from the previous
  one (bytes folded to the 15 most frequent + "other"), on a fixed batch of 256
  pairs (sigma 0.5). Its smoothed gradient has no closed form; the full-rank
  reference is OpenAI-ES averaged over ``--ref-seeds`` x the largest population.

Reported, per rank r in (1, 2, 4, 8, 16, full) and population N, averaged over
seeds: the cosine similarity of one estimate to the full-rank ES gradient
(exact for the quartic, the large-population reference for the MLP) and to the
true gradient (``jax.grad``); and, from ``--ref-seeds`` x N_max members per
rank, the relative distance of the low-rank expectation to the full-rank one
with the fitted C / r line.

Run::

    python benchmarks/lowrank_estimator.py            # ~11 minutes on 2 shared CPU cores (669 s, load ~9)
    python benchmarks/lowrank_estimator.py --quick    # ~2 minutes, smaller grid

Writes ``benchmarks/results/lowrank_estimator.{json,md,png}`` (``--quick``: ``lowrank_estimator_quick.*``;
``--out DIR`` for another folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import eggroll
from eggroll import lowrank

RESULTS = Path(__file__).resolve().parent / "results"
RANKS = (1, 2, 4, 8, 16)
FULL = "full"


# --------------------------------------------------------------------------- problems


class Problem:
    """A fixed fitness at a fixed point: ``fitness(params) -> float`` (params may hold LowRank leaves)."""

    def __init__(self, name: str, mean: dict, fitness: Callable, sigma: float, smoothed: Callable | None = None):
        self.name, self.mean, self.fitness, self.sigma = name, mean, fitness, sigma
        self.smoothed = smoothed  # kappa -> exact smoothed gradient (flat), or None

    def true_gradient(self) -> np.ndarray:
        return flat(jax.grad(self.fitness)(self.mean))


def flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def quartic_problem(size: int = 16, sigma: float = 0.5, seed: int = 0) -> Problem:
    """``f(W) = <G, W> + sum W^4 / 4`` at a random ``W``; exact smoothed gradients."""
    kw, kg = jax.random.split(jax.random.key(seed))
    w0 = jax.random.normal(kw, (size, size))
    g = jax.random.normal(kg, (size, size))

    def fitness(params):
        w = lowrank.materialize(params["w"])
        return jnp.sum(g * w) + 0.25 * jnp.sum(w**4)

    def smoothed(kappa: float) -> np.ndarray:
        w = np.asarray(w0, np.float64)
        return np.ravel(np.asarray(g, np.float64) + w**3 + kappa * sigma**2 * w)

    return Problem("quartic", {"w": w0}, fitness, sigma, smoothed)


def mlp_problem(hidden: int = 16, classes: int = 16, batch: int = 256, sigma: float = 0.5, seed: int = 0) -> Problem:
    """Next-byte cross-entropy of a one-hidden-layer tanh MLP on pydoc_data.topics (a real task loss)."""
    from eggroll.problems import text

    data = np.frombuffer(text.default_corpus(), np.uint8)
    top = np.argsort(-np.bincount(data, minlength=256))[: classes - 1]
    fold = np.full(256, classes - 1, np.int32)
    fold[top] = np.arange(classes - 1)
    ids = fold[data]
    pos = np.random.default_rng(seed).choice(len(ids) - 1, batch, replace=False)
    x, y = jnp.asarray(ids[pos]), jnp.asarray(ids[pos + 1])
    k1, k2 = jax.random.split(jax.random.key(seed))
    mean = {
        "embed": jax.random.normal(k1, (classes, hidden)),
        "head": jax.random.normal(k2, (hidden, classes)) / np.sqrt(hidden),
        "bias": jnp.zeros(classes),
    }

    def fitness(params):
        h = jnp.tanh(lowrank.embed(x, params["embed"]))
        logits = lowrank.matmul(h, params["head"]) + params["bias"]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])

    return Problem("mlp", mean, fitness, sigma)


# --------------------------------------------------------------------------- the estimates (library code)


def make_estimator(problem: Problem, rank: int | str, population: int) -> Callable[[int], np.ndarray]:
    """``seed -> flat gradient estimate`` from one ask / evaluate / tell of the library's strategy.

    ``rank`` is an int for ``eggroll.eggroll`` or ``"full"`` for ``eggroll.open_es``. With
    ``optax.sgd(1)`` and identity shaping, ``mean - new_mean`` is the strategy's estimate.
    """
    common = dict(
        optimizer=optax.sgd(1.0), sigma_init=problem.sigma, fitness_shaping="identity", track_best=False
    )  # fmt: skip
    if rank == FULL:
        es = eggroll.open_es(population, problem.mean, **common)
    else:
        es = eggroll.eggroll(population, problem.mean, rank=int(rank), **common)
    params = es.default_params

    @jax.jit
    def run(key):
        state = es.init(jax.random.fold_in(key, 0), problem.mean, params)
        pop, state = es.ask(jax.random.fold_in(key, 1), state, params)
        fitness = eggroll.evaluate(problem.fitness, pop)
        new, _ = es.tell(jax.random.fold_in(key, 2), pop, fitness, state, params)
        return jax.tree.map(lambda a, b: a - b, state.mean, new.mean)

    return lambda seed: flat(run(jax.random.key(seed)))


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def study(
    problem: Problem, ranks=RANKS, populations=(64, 256, 1024, 4096), seeds: int = 8, ref_seeds: int = 32
) -> dict:
    """Cosines per (rank, population) and the large-population gap per rank for one problem.

    Returns a dict with ``cos_full[rank][N]`` / ``cos_true[rank][N]`` (mean and std over
    ``seeds``), ``gap[rank]`` (relative distance of the ``ref_seeds x N_max`` mean estimate
    to the full-rank expectation, noise floor subtracted where the reference is itself
    Monte Carlo) and the fitted ``C`` of ``gap = C / r``.
    """
    n_max = max(populations)
    true = problem.true_gradient()
    all_ranks = [*ranks, FULL]
    cache: dict = {}

    def estimator(r, n):
        if (r, n) not in cache:
            cache[r, n] = make_estimator(problem, r, n)
        return cache[r, n]

    big: dict[str, np.ndarray] = {}
    noise2: dict[str, float] = {}  # Monte Carlo variance of each big mean, summed over coordinates
    for r in all_ranks:
        draws = np.stack([estimator(r, n_max)(10_000 + s) for s in range(2 * ref_seeds if r == FULL else ref_seeds)])
        big[str(r)] = draws[:ref_seeds].mean(axis=0)
        noise2[str(r)] = float(draws[:ref_seeds].var(axis=0, ddof=1).sum()) / ref_seeds
        if r == FULL:
            ref_mc = draws[ref_seeds:].mean(axis=0)  # independent draws: the MC reference
    exact = problem.smoothed is not None
    reference = problem.smoothed(3.0) if exact else ref_mc
    out: dict[str, Any] = {"problem": problem.name, "sigma": problem.sigma, "dim": int(true.size)}
    out["reference"] = "exact Gaussian-smoothed gradient" if exact else f"OpenAI-ES, {ref_seeds} x N={n_max}"
    out["cos_reference_true"] = cosine(reference, true)
    cos_full: dict[str, dict[str, list[float]]] = {}
    cos_true: dict[str, dict[str, list[float]]] = {}
    for r in all_ranks:
        cos_full[str(r)], cos_true[str(r)] = {}, {}
        for n in populations:
            gs = [estimator(r, n)(s) for s in range(seeds)]
            cf = [cosine(g, reference) for g in gs]
            ct = [cosine(g, true) for g in gs]
            cos_full[str(r)][str(n)] = [float(np.mean(cf)), float(np.std(cf))]
            cos_true[str(r)][str(n)] = [float(np.mean(ct)), float(np.std(ct))]
    out["cos_full"], out["cos_true"] = cos_full, cos_true
    norm = np.linalg.norm(reference)
    gap, gap_raw, gap_exact = {}, {}, {}
    for r in all_ranks:
        raw = float(np.linalg.norm(big[str(r)] - reference))
        floor2 = noise2[str(r)] + (0.0 if exact else noise2[FULL])  # an MC reference carries its own noise
        gap_raw[str(r)] = raw / norm
        gap[str(r)] = float(np.sqrt(max(raw**2 - floor2, 0.0))) / norm
        if exact and r != FULL:
            gap_exact[str(r)] = float(np.linalg.norm(problem.smoothed(3.0 + 6.0 / r) - reference) / norm)
    out["gap"], out["gap_raw"], out["gap_exact"] = gap, gap_raw, gap_exact
    rs = np.array(ranks, float)
    ys = np.array([gap[str(r)] for r in ranks])
    out["fit_C"] = float(np.sum(ys / rs) / np.sum(1 / rs**2))  # least squares of gap = C / r
    out["cos_mean_to_reference"] = {str(r): cosine(big[str(r)], reference) for r in all_ranks}
    return out


# --------------------------------------------------------------------------- report


def plot(results: list[dict], path: Path, ranks=RANKS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(14, 4 * len(results)), squeeze=False)
    xs = [*ranks, 2 * ranks[-1]]  # "full" drawn one octave past the largest rank
    labels = [*map(str, ranks), "full"]
    for row, res in zip(axes, results, strict=True):
        pops = list(res["cos_full"]["1"])
        for key, ax, what in (("cos_full", row[0], "full-rank ES"), ("cos_true", row[1], "true gradient")):
            for n in pops:
                ys = [res[key][lab][n][0] for lab in labels]
                es = [res[key][lab][n][1] for lab in labels]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, label=f"N = {n}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, labels)
            ax.set_xlabel("rank r")
            ax.set_ylabel(f"cosine to {what}")
            ax.set_title(f"{res['problem']}: one estimate vs {what}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax = row[2]
        ax.loglog(ranks, [res["gap"][str(r)] for r in ranks], "o-", base=2, label="measured (noise floor removed)")
        ax.loglog(ranks, [res["gap_raw"][str(r)] for r in ranks], "x:", base=2, alpha=0.6, label="measured (raw)")
        if res["gap_exact"]:
            ax.loglog(ranks, [res["gap_exact"][str(r)] for r in ranks], "k-", lw=0.8, base=2, label="exact 6σ²|W|/r")
        rr = np.array(ranks, float)
        ax.loglog(rr, res["fit_C"] / rr, "--", color="gray", base=2, label=f"fit C/r, C = {res['fit_C']:.3f}")
        ax.set_xlabel("rank r")
        ax.set_ylabel("|E g_r - E g_full| / |E g_full|")
        ax.set_title(f"{res['problem']}: low-rank expectation vs full rank")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(record: dict, image: str) -> str:
    m = record["machine"]
    lines = [
        "# Low-rank (EGGROLL) vs full-rank (OpenAI-ES) gradient estimates",
        "",
        f"`{record['command']}`: {record['wall_seconds']:.0f} s on {m['cpus']} shared CPU cores "
        f"(load average {m['load_avg_before'][0]:.1f} before, {m['load_avg_after'][0]:.1f} after), jax {m['jax']}.",
        "",
        "Each estimate is one `ask` / `evaluate` / `tell` of the library's strategy (`eggroll.eggroll` at rank r,",
        "`eggroll.open_es` for *full*), identity fitness shaping, antithetic pairs, `optax.sgd(1)`: the step of the",
        f"mean is minus `g = 1/(N sigma) sum_i f_i eps_i`. Cosines are the mean (± std) over {record['seeds']} seeds.",
        "",
        "The paper's claim (EGGROLL, Sarkar et al. 2025): the low-rank update converges to the full-rank one at",
        "rate O(1/r). The last table measures that gap directly from a large population per rank.",
    ]
    for res in record["results"]:
        labels = [*map(str, record["ranks"]), FULL]
        pops = list(res["cos_full"]["1"])
        lines += [
            "",
            f"## {res['problem']} (dimension {res['dim']:,}, sigma {res['sigma']:g})",
            "",
            f"Full-rank reference: {res['reference']} (its cosine to the true gradient: "
            f"{res['cos_reference_true']:.4f}).",
        ]
        for key, what in (("cos_full", "the full-rank ES gradient"), ("cos_true", "the true gradient (jax.grad)")):
            lines += ["", f"Cosine of one estimate to {what}:", ""]
            lines += ["| N \\ r | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
            for n in pops:
                cells = [f"{res[key][lab][n][0]:.3f} ± {res[key][lab][n][1]:.3f}" for lab in labels]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Gap of the low-rank expectation to the full-rank one, from {record['ref_seeds']} x "
            f"N = {record['ref_population']} members per rank (relative, `|E g_r - E g_full| / |E g_full|`):",
            "",
            "| r | measured (noise floor removed) | measured raw | fit C / r |"
            + (" exact 6σ²\\|W\\|/r / \\|g\\| |" if res["gap_exact"] else "")
            + " cosine of the mean to full rank |",
            "|---|---|---|---|" + ("---|" if res["gap_exact"] else "") + "---|",
        ]
        for r in record["ranks"]:
            exact = f" {res['gap_exact'][str(r)]:.4f} |" if res["gap_exact"] else ""
            lines.append(
                f"| {r} | {res['gap'][str(r)]:.4f} | {res['gap_raw'][str(r)]:.4f} | {res['fit_C'] / r:.4f} |{exact} "
                f"{res['cos_mean_to_reference'][str(r)]:.4f} |"
            )
        lines.append(
            f"| full | {res['gap'][FULL]:.4f} | {res['gap_raw'][FULL]:.4f} | 0 |"
            + (" 0 |" if res["gap_exact"] else "")
            + f" {res['cos_mean_to_reference'][FULL]:.4f} |"
        )
    lines += ["", f"![cosines and gap]({image})", "", "## Reading", ""]
    lines += record["reading"]
    return "\n".join(lines) + "\n"


def reading(results: list[dict], populations) -> list[str]:
    """Plain statements drawn from the numbers (no hand-written figures)."""
    out = []
    n_max = str(max(populations))
    top = str(RANKS[-1])
    for res in results:
        cf, ct, gap = res["cos_full"], res["cos_true"], res["gap"]
        out.append(
            f"- {res['problem']}, one estimate at N = {n_max}: cosine to the full-rank ES gradient "
            f"{cf['1'][n_max][0]:.3f} at r = 1, {cf[top][n_max][0]:.3f} at r = {top}, {cf[FULL][n_max][0]:.3f} for "
            f"OpenAI-ES itself; to the true gradient {ct['1'][n_max][0]:.3f} / {ct[top][n_max][0]:.3f} / "
            f"{ct[FULL][n_max][0]:.3f}. At a fixed population the rank mostly changes the variance of the estimate "
            "(the entries of A B^T / sqrt(r) have kurtosis 3 + 6/r), and a larger population helps more than a "
            "larger rank."
        )
        exact = f" (closed form {res['gap_exact']['1']:.4f} / {res['gap_exact']['4']:.4f})" if res["gap_exact"] else ""
        out.append(
            f"- {res['problem']}, expectation gap to full rank: {gap['1']:.4f} at r = 1, {gap['4']:.4f} at r = 4"
            f"{exact}, {gap[top]:.4f} at r = {top}; least-squares C / r fit C = {res['fit_C']:.4f}. Gaps below the "
            "Monte Carlo floor of the measurement read as 0."
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--ref-seeds", type=int, default=32, help="seeds x N_max members per rank for the gap")
    parser.add_argument("--populations", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--quick", action="store_true", help="small grid (~2 minutes), for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.ref_seeds, args.populations = 3, 8, [256, 4096]
    load = os.getloadavg()
    t0 = time.perf_counter()
    results = []
    for problem in (quartic_problem(), mlp_problem()):
        t = time.perf_counter()
        res = study(problem, populations=tuple(args.populations), seeds=args.seeds, ref_seeds=args.ref_seeds)
        res["seconds"] = round(time.perf_counter() - t, 1)
        print(f"{problem.name}: {res['seconds']} s; gap {res['gap']}", flush=True)
        results.append(res)
    record = {
        "command": " ".join(["python benchmarks/lowrank_estimator.py", *sys.argv[1:]]),
        "ranks": list(RANKS),
        "populations": args.populations,
        "seeds": args.seeds,
        "ref_seeds": args.ref_seeds,
        "ref_population": max(args.populations),
        "results": results,
        "reading": reading(results, args.populations),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": load,
            "load_avg_after": os.getloadavg(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
    }
    path = args.out / ("lowrank_estimator_quick.json" if args.quick else "lowrank_estimator.json")
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    plot(results, path.with_suffix(".png"))
    md = markdown(record, path.with_suffix(".png").name)
    path.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
