"""Tables and COCO-style ECDF plots for :class:`~eggroll.apps.bbob.BenchmarkResult`."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eggroll.problems.bbob.instances import FUNCTION_NAMES

if TYPE_CHECKING:
    from eggroll.apps.bbob import BenchmarkResult

__all__ = ["FUNCTION_GROUPS", "ecdf_curve", "plot_ecdf", "plot_ecdf_groups", "summary_markdown", "write_tables"]

FUNCTION_GROUPS: dict[str, tuple[int, ...]] = {
    "separable f1-f5": (1, 2, 3, 4, 5),
    "low/moderate conditioning f6-f9": (6, 7, 8, 9),
    "high conditioning, unimodal f10-f14": (10, 11, 12, 13, 14),
    "multimodal, adequate structure f15-f19": (15, 16, 17, 18, 19),
    "multimodal, weak structure f20-f24": (20, 21, 22, 23, 24),
}
"""COCO's five BBOB function groups."""

_COLUMNS = (
    "strategy",
    "function",
    "instance",
    "dimension",
    "population_size",
    "budget",
    "evaluations",
    "final_delta",
    "best_target",
    "evals_to_best_target",
    "evals_to_1e-8",
)


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == 0:
        return "0"
    return f"{v:.1e}"


def summary_markdown(result: BenchmarkResult, wall_time: bool = True) -> str:
    """A markdown report: per dimension, a function x strategy table and the per-strategy totals.

    Each cell reads ``median final f-fopt (instances that reached 1e-8 / all)``; ``wall_time`` adds a row
    of each run's seconds (left out of ``bbob_results.md``, which a resumed run must reproduce byte for byte).
    """
    lines: list[str] = []
    names = result.strategies
    for d in sorted(result.problems):
        rows = [r for r in result.records if r["dimension"] == d]
        if not rows:
            continue
        budget = result.budgets[d]
        lines.append(f"### {d}-D, budget {budget} evaluations ({budget // d} x D)\n")
        lines.append("Cell: median over instances of the best f - fopt reached (instances that reached 1e-8).\n")
        lines.append("| function | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        fids = sorted({r["function"] for r in rows})
        for f in fids:
            cells = []
            for name in names:
                rs = [r for r in rows if r["function"] == f and r["strategy"] == name]
                if not rs:
                    cells.append("")
                    continue
                med = float(np.median([r["final_delta"] for r in rs]))
                solved = sum(r["evals_to_1e-8"] >= 0 for r in rs)
                cells.append(f"{_fmt(med)} ({solved}/{len(rs)})")
            lines.append(f"| f{f} {FUNCTION_NAMES[f]} | " + " | ".join(cells) + " |")
        totals = []
        for name in names:
            hits = result.hits.get((name, d))
            if hits is None:
                totals.append("")
                continue
            frac = float(np.mean(hits >= 0))
            solved = int(np.sum(hits[:, -1] >= 0))
            totals.append(f"{frac:.0%} targets, {solved}/{hits.shape[0]} solved")
        lines.append("| **all** | " + " | ".join(totals) + " |")
        if wall_time:
            secs = [f"{result.seconds.get((name, d), float('nan')):.0f} s" for name in names]
            lines.append("| wall time | " + " | ".join(secs) + " |")
        lines.append("")
    return "\n".join(lines)


def write_tables(result: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``bbob_results.csv`` (one row per run), ``bbob_results.md`` and ``bbob_runtimes.npz``.

    They hold no wall-clock figure, so a resumed run writes the same bytes as an uninterrupted one.

    Returns:
        ``{"csv": path, "markdown": path, "runtimes": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "bbob_results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(_COLUMNS))
        writer.writeheader()
        for rec in result.records:
            writer.writerow({k: rec[k] for k in _COLUMNS})
    md_path = out / "bbob_results.md"
    md_path.write_text("# BBOB results\n\n" + summary_markdown(result, wall_time=False) + "\n")
    npz_path = out / "bbob_runtimes.npz"
    arrays = {f"hits__{name}__{d}": hits for (name, d), hits in result.hits.items()}
    arrays.update({f"problems__{d}": np.asarray(p, dtype=np.int32) for d, p in result.problems.items()})
    arrays["budgets"] = np.asarray(sorted(result.budgets.items()), dtype=np.int64)
    np.savez_compressed(npz_path, **arrays)
    return {"csv": csv_path, "markdown": md_path, "runtimes": npz_path}


def ecdf_curve(hits: np.ndarray, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """The empirical runtime distribution over all (problem, target) pairs.

    Args:
        hits: ``(P, T)`` first-hit evaluations (``-1`` = not reached).
        dimension: ``D``; runtimes are shown as ``log10(evals / D)``.

    Returns:
        ``(x, y)``: sorted ``log10(evals / D)`` of the reached pairs and the
        fraction of all pairs reached by then (a step function).
    """
    total = hits.size
    reached = np.sort(hits[hits >= 0].astype(np.float64))
    x = np.log10(np.maximum(reached, 1.0) / dimension)
    y = np.arange(1, reached.size + 1) / max(total, 1)
    return x, y


def plot_ecdf(result: BenchmarkResult, path: str | Path, title: str | None = None) -> Path:
    """Draws COCO-style runtime ECDFs, one panel per dimension, and saves them to ``path``.

    As in COCO's ``cocopp``: 51 targets ``10^[2..-8]``, x = ``log10(#f-evals / dimension)``,
    y = fraction of (function, instance, target) triples reached, one step curve per
    strategy ending with a cross at the budget. Unlike ``cocopp`` there is no
    bootstrapped restart simulation beyond the budget.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(result.problems)
    fig, axes = plt.subplots(1, len(dims), figsize=(5.2 * len(dims), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v", "<", ">", "p", "h", "*"]
    for ax, d in zip(axes[0], dims, strict=True):
        xmax = math.log10(result.budgets[d] / d)
        fids = sorted({f for f, _ in result.problems[d]})
        n_inst = len({i for _, i in result.problems[d]})
        for j, name in enumerate(result.strategies):
            hits = result.hits.get((name, d))
            if hits is None:
                continue
            x, y = ecdf_curve(hits, d)
            xs = np.concatenate([[0.0], x, [xmax]])
            ys = np.concatenate([[0.0], y, [y[-1] if y.size else 0.0]])
            color = colors[j % len(colors)]
            ax.step(xs, ys, where="post", color=color, lw=2, label=name)
            ax.plot([xmax], [ys[-1]], marker="x", ms=10, mew=2, color=color)
            if x.size:
                idx = np.linspace(0, x.size - 1, min(6, x.size)).astype(int)
                ax.plot(x[idx], y[idx], ls="none", marker=markers[j % len(markers)], color=color, ms=5)
        ax.set_xlim(0, max(xmax, 0.5) + 0.3)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.4)
        ax.set_xlabel("log10(# f-evals / dimension)")
        ax.set_ylabel("Fraction of function,target pairs")
        ftxt = f"f{fids[0]}-f{fids[-1]}" if fids == list(range(fids[0], fids[-1] + 1)) else f"{len(fids)} functions"
        ax.set_title(title or f"bbob {ftxt}, {d}-D\n51 targets 1e2..1e-8, {n_inst} instances", fontsize=10)
        if ax.get_legend_handles_labels()[0]:  # no finished run (a capped or time-boxed benchmark): no legend
            ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ecdf_groups(result: BenchmarkResult, dimension: int, path: str | Path) -> Path:
    """ECDFs per COCO function group (plus all functions) for one dimension, as ``cocopp`` shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = result.problems[dimension]
    xmax = math.log10(result.budgets[dimension] / dimension)
    panels = [("all functions", tuple(sorted({f for f, _ in problems})))]
    panels += [(name, fids) for name, fids in FUNCTION_GROUPS.items() if any(f in fids for f, _ in problems)]
    ncol = 3
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.0 * ncol, 3.8 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (label, fids) in zip(axes.ravel(), panels, strict=False):
        rows = np.array([f in fids for f, _ in problems])
        for j, name in enumerate(result.strategies):
            hits = result.hits.get((name, dimension))
            if hits is None:
                continue
            x, y = ecdf_curve(hits[rows], dimension)
            xs = np.concatenate([[0.0], x, [xmax]])
            ys = np.concatenate([[0.0], y, [y[-1] if y.size else 0.0]])
            color = colors[j % len(colors)]
            ax.step(xs, ys, where="post", color=color, lw=2, label=name)
            ax.plot([xmax], [ys[-1]], marker="x", ms=9, mew=2, color=color)
        ax.set_title(f"{label}, {dimension}-D", fontsize=10)
        ax.set_xlim(0, xmax + 0.3)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.4)
        ax.set_xlabel("log10(# f-evals / dimension)")
        ax.set_ylabel("Fraction of function,target pairs")
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
