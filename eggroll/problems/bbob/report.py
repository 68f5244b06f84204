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
        for f in sorted({r["function"] for r in rows}):
            cells = [_cell([r for r in rows if r["function"] == f and r["strategy"] == name]) for name in names]
            lines.append(f"| f{f} {FUNCTION_NAMES[f]} | " + " | ".join(cells) + " |")
        totals = [_total(result.hits.get((name, d))) for name in names]
        lines.append("| **all** | " + " | ".join(totals) + " |")
        if wall_time:
            secs = [f"{result.seconds.get((name, d), float('nan')):.0f} s" for name in names]
            lines.append("| wall time | " + " | ".join(secs) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(rows: list[dict]) -> str:
    """``median best f-fopt (instances solved to 1e-8 / all)`` of one function's runs ("" for none)."""
    if not rows:
        return ""
    median = float(np.median([r["final_delta"] for r in rows]))
    solved = sum(r["evals_to_1e-8"] >= 0 for r in rows)
    text = "-" if math.isnan(median) else "0" if median == 0 else f"{median:.1e}"
    return f"{text} ({solved}/{len(rows)})"


def _total(hits: np.ndarray | None) -> str:
    """The share of (problem, target) pairs reached and the problems solved to 1e-8 ("" for no run)."""
    if hits is None:
        return ""
    return f"{float(np.mean(hits >= 0)):.0%} targets, {int(np.sum(hits[:, -1] >= 0))}/{hits.shape[0]} solved"


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
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS)  # the records' keys, in this order
        writer.writeheader()
        writer.writerows(result.records)
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
    reached = np.sort(hits[hits >= 0].astype(np.float64))
    x = np.log10(np.maximum(reached, 1.0) / dimension)
    y = np.arange(1, reached.size + 1) / max(hits.size, 1)
    return x, y


def plot_ecdf(result: BenchmarkResult, path: str | Path, title: str | None = None) -> Path:
    """Draws COCO-style runtime ECDFs, one panel per dimension, and saves them to ``path``.

    As in COCO's ``cocopp``: 51 targets ``10^[2..-8]``, x = ``log10(#f-evals / dimension)``,
    y = fraction of (function, instance, target) triples reached, one step curve per
    strategy ending with a cross at the budget. Unlike ``cocopp`` there is no
    bootstrapped restart simulation beyond the budget.
    """
    dims = sorted(result.problems)
    fig, axes = _subplots(1, len(dims), (5.2 * len(dims), 4.2))
    for ax, d in zip(axes[0], dims, strict=True):
        xmax = _draw_ecdfs(ax, result, d, slice(None), cross=10, markers=True)
        fids = sorted({f for f, _ in result.problems[d]})
        n_inst = len({i for _, i in result.problems[d]})
        ax.set_xlim(0, max(xmax, 0.5) + 0.3)
        ftxt = f"f{fids[0]}-f{fids[-1]}" if fids == list(range(fids[0], fids[-1] + 1)) else f"{len(fids)} functions"
        ax.set_title(title or f"bbob {ftxt}, {d}-D\n51 targets 1e2..1e-8, {n_inst} instances", fontsize=10)
        if ax.get_legend_handles_labels()[0]:  # no finished run (a capped or time-boxed benchmark): no legend
            ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path, dpi=110)


def plot_ecdf_groups(result: BenchmarkResult, dimension: int, path: str | Path) -> Path:
    """ECDFs per COCO function group (plus all functions) for one dimension, as ``cocopp`` shows them."""
    problems = result.problems[dimension]
    panels = [("all functions", tuple(sorted({f for f, _ in problems})))]
    panels += [(name, fids) for name, fids in FUNCTION_GROUPS.items() if any(f in fids for f, _ in problems)]
    ncol = 3
    nrow = -(-len(panels) // ncol)
    fig, axes = _subplots(nrow, ncol, (5.0 * ncol, 3.8 * nrow))
    for ax, (label, fids) in zip(axes.ravel(), panels, strict=False):
        rows = np.array([f in fids for f, _ in problems])
        xmax = _draw_ecdfs(ax, result, dimension, rows, cross=9, markers=False)
        ax.set_title(f"{label}, {dimension}-D", fontsize=10)
        ax.set_xlim(0, xmax + 0.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    return _save(fig, path, dpi=100)


def _subplots(nrow: int, ncol: int, figsize: tuple[float, float]):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrow, ncol, squeeze=False)


def _draw_ecdfs(ax, result: BenchmarkResult, d: int, rows, cross: float, markers: bool) -> float:
    """One panel: each strategy's ECDF over the problems ``rows`` of dimension ``d``; returns ``log10(budget / d)``."""
    shapes = ["o", "s", "^", "D", "v", "<", ">", "p", "h", "*"]
    xmax = math.log10(result.budgets[d] / d)
    for j, name in enumerate(result.strategies):
        hits = result.hits.get((name, d))
        if hits is None:
            continue
        x, y = ecdf_curve(hits[rows], d)
        xs = np.concatenate([[0.0], x, [xmax]])
        ys = np.concatenate([[0.0], y, [y[-1] if y.size else 0.0]])
        color = f"C{j}"  # the j-th colour of matplotlib's cycle (it wraps around)
        ax.step(xs, ys, where="post", color=color, lw=2, label=name)
        ax.plot([xmax], [ys[-1]], marker="x", ms=cross, mew=2, color=color)
        if markers and x.size:
            idx = np.linspace(0, x.size - 1, min(6, x.size)).astype(int)
            ax.plot(x[idx], y[idx], ls="none", marker=shapes[j % len(shapes)], color=color, ms=5)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.4)
    ax.set_xlabel("log10(# f-evals / dimension)")
    ax.set_ylabel("Fraction of function,target pairs")
    return xmax


def _save(fig, path: str | Path, dpi: int) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
