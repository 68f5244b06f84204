"""RL study (issue 17, item 1): EGGROLL vs OpenAI-ES vs an evosax baseline on gymnax and Brax tasks.

The EGGROLL paper compares EGGROLL with OpenAI-ES on 16 environments: 10 seeds each, returns
normalised by PPO, and a count of the environments where it matches, wins or loses (7 / 7 / 2). This
script makes the same comparison at this machine's scale:

- tasks: gymnax CartPole-v1, Acrobot-v1, MountainCar-v0, MountainCarContinuous-v0, Pendulum-v1,
  Catch-bsuite; Brax inverted_pendulum and hopper (short horizons; CPU);
- methods: ``eggroll`` (rank 1), ``open_es`` (full rank) and ``evosax:SNES`` through the strategy
  registry (:func:`eggroll.strategies.make`);
- equal budget: every method runs the same population, episodes per member, horizon and
  generations on a task, so each gets the same number of environment steps at most (``early_exit``
  can end a generation's episodes sooner; the table reports the steps actually taken);
- tuning: a small sweep per method and task (``SWEEP`` below: sigma, and the Adam learning rate for
  eggroll / open_es; SNES keeps evosax's own learning rates) on two tuning seeds that are not among
  the reported ones; the setting with the best mean final evaluation is then run on the reported
  seeds;
- the score: the final evaluation of the mean policy (deterministic actions, 16 fresh episodes),
  mean and 95% confidence interval (Student t) over the seeds, and the wall time of a run;
- win / tie / loss: EGGROLL against OpenAI-ES per task by Welch's t-test at the 5% level (a tie when
  the difference is not significant), the paper's style of summary.

Every run is :func:`eggroll.apps.rl.train` (the code ``eggroll rl`` runs). JAX's persistent
compilation cache is on, so the seeds of one setting compile once.

    python benchmarks/rl_study.py                         # the whole study (long: see the md for times)
    python benchmarks/rl_study.py --tasks CartPole-v1,Pendulum-v1 --seeds 3 --out /tmp/rl_study
    python benchmarks/rl_study.py --quick                 # two tasks, two seeds, no sweep (minutes)

Writes ``benchmarks/results/rl_study.{json,md,png}`` (``--quick``: ``rl_study_quick.*``; ``--out DIR``
for another folder); a rerun with ``--tasks`` merges its tasks into the existing JSON (the other tasks'
results stay). A run with other seeds or sweep than the JSON there is refused: it would replace it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

RESULTS = Path(__file__).parent / "results"
METHODS = ("eggroll", "open_es", "evosax:SNES")

# Per task: the budget every method shares. generations x population x rollouts x horizon bounds the
# environment steps of a run.
TASKS: dict[str, dict] = {
    "CartPole-v1": dict(generations=25, population_size=128, num_rollouts=2),
    "Acrobot-v1": dict(generations=25, population_size=128, num_rollouts=2),
    "MountainCar-v0": dict(generations=25, population_size=128, num_rollouts=2),
    "MountainCarContinuous-v0": dict(generations=25, population_size=128, num_rollouts=2),
    "Pendulum-v1": dict(generations=40, population_size=128, num_rollouts=2),
    "Catch-bsuite": dict(generations=25, population_size=128, num_rollouts=2),
    "inverted_pendulum": dict(generations=20, population_size=64, num_rollouts=1, horizon=200),
    "hopper": dict(generations=20, population_size=64, num_rollouts=1, horizon=100),
}
# The sweep per method: (sigma, learning_rate) pairs; SNES's learning rate is evosax's own (None).
SWEEP: dict[str, list[tuple[float, float | None]]] = {
    "eggroll": [(0.05, 0.05), (0.1, 0.05), (0.05, 0.2), (0.2, 0.1)],
    "open_es": [(0.05, 0.05), (0.1, 0.05), (0.05, 0.2), (0.2, 0.1)],
    "evosax:SNES": [(0.05, None), (0.2, None), (0.5, None)],
}
TUNE_SEEDS = (1000, 1001)
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, df)


def run_one(env: str, method: str, sigma: float, lr: float | None, seed: int) -> dict:
    """One training run; its final evaluation, best evaluation, steps and wall time."""
    from eggroll.apps.rl import RLConfig, train

    budget = TASKS[env]
    config = RLConfig(
        env=env,
        strategy=method,
        sigma=sigma,
        learning_rate=lr if lr is not None else 0.05,
        seed=seed,
        eval_every=max(1, budget["generations"] // 5),
        **budget,
    )
    t0 = time.perf_counter()
    result = train(config, progress=False)
    seconds = time.perf_counter() - t0
    h = result.history
    return {
        "final_return": float(h["eval_return"][-1]),
        "best_eval_return": float(result.best_eval_return),
        "env_steps": float(h["env_steps"][-1]),
        "seconds": seconds,
        "curve": [h["eval_generation"], h["eval_return"]],
    }


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (Student t)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def welch(a: list[float], b: list[float]) -> str:
    """``win`` / ``tie`` / ``loss`` of ``a`` against ``b`` (higher is better) by Welch's t-test at 5%."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return "n/a"
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:  # no spread: the t-test is undefined
        significant = ma != mb
    else:
        significant = stats.ttest_ind(a, b, equal_var=False).pvalue < 0.05
    if not significant:
        return "tie"
    return "win" if ma > mb else "loss"


def study_task(env: str, seeds: list[int], sweep: bool, say) -> dict:
    out: dict = {"budget": TASKS[env], "methods": {}}
    for method in METHODS:
        grid = SWEEP[method] if sweep else SWEEP[method][:1]
        tried = []
        for sigma, lr in grid:
            if len(grid) == 1:
                break
            scores = [run_one(env, method, sigma, lr, s)["final_return"] for s in TUNE_SEEDS]
            tried.append({"sigma": sigma, "learning_rate": lr, "tune_final_return": statistics.fmean(scores)})
            say(f"  tune {env} {method} sigma={sigma} lr={lr}: {statistics.fmean(scores):.2f}")
        best = (
            max(tried, key=lambda t: t["tune_final_return"])
            if tried
            else {"sigma": grid[0][0], "learning_rate": grid[0][1]}
        )
        runs = [run_one(env, method, best["sigma"], best["learning_rate"], s) for s in seeds]
        finals = [r["final_return"] for r in runs]
        m, ci = mean_ci(finals)
        out["methods"][method] = {
            "sigma": best["sigma"],
            "learning_rate": best["learning_rate"],
            "sweep": tried,
            "final_returns": finals,
            "mean": m,
            "ci95": ci,
            "env_steps": statistics.fmean(r["env_steps"] for r in runs),
            "seconds": statistics.fmean(r["seconds"] for r in runs),
            "curves": [r["curve"] for r in runs],
        }
        say(f"{env:26s} {method:12s} {m:10.2f} +- {ci:.2f}  ({statistics.fmean(r['seconds'] for r in runs):.1f} s/run)")
    e, o = (out["methods"][k]["final_returns"] for k in ("eggroll", "open_es"))
    out["eggroll_vs_open_es"] = welch(e, o)
    return out


def write(record: dict, path: Path) -> None:
    """``path`` (the JSON) and the markdown and plot beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    tasks = record["tasks"]
    lines = [
        "# RL study: EGGROLL vs OpenAI-ES vs SNES (evosax) at this machine's scale",
        "",
        f"{record['seeds']} seeds per method (reported seeds 0..{record['seeds'] - 1}); sweep: "
        f"{'yes, on tuning seeds ' + str(list(TUNE_SEEDS)) if record['sweep'] else 'no (first setting of SWEEP)'}; "
        f"CPU ({os.cpu_count()} cores, shared). Final evaluation of the mean policy (16 episodes), mean +- 95% CI.",
        "",
        "| task | budget (gen x pop x episodes) | " + " | ".join(METHODS) + " | EGGROLL vs OpenAI-ES |",
        "|---|---|" + "---:|" * len(METHODS) + "---|",
    ]
    for env, t in tasks.items():
        b = t["budget"]
        cells = []
        for method in METHODS:
            r = t["methods"][method]
            lr = "" if r["learning_rate"] is None else f", lr {r['learning_rate']}"
            cells.append(f"{r['mean']:.1f} +- {r['ci95']:.1f} (sigma {r['sigma']}{lr}; {r['seconds']:.0f} s)")
        budget = f"{b['generations']} x {b['population_size']} x {b['num_rollouts']}"
        lines.append(f"| {env} | {budget} | " + " | ".join(cells) + f" | {t['eggroll_vs_open_es']} |")
    counts = {k: sum(t["eggroll_vs_open_es"] == k for t in tasks.values()) for k in ("win", "tie", "loss")}
    lines += [
        "",
        f"EGGROLL against OpenAI-ES (Welch t-test, 5%): **{counts['win']} wins, {counts['tie']} ties, "
        f"{counts['loss']} losses** over {len(tasks)} tasks (paper, 16 environments: 7 better, 7 matching, 2 worse).",
        "",
        "Seconds are the mean wall time of one run (compilation included) on a CPU shared with other jobs: "
        "compare them within a row only.",
        "",
        f"![learning curves]({path.stem}.png)",
        "",
        f"Reproduce: `{record['command']}`",
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(tasks, path.with_suffix(".png"))


def plot(tasks: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(tasks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (env, t) in zip(axes.flat, tasks.items(), strict=False):
        for method, color in zip(METHODS, ("tab:orange", "tab:blue", "tab:green"), strict=True):
            curves = t["methods"][method]["curves"]
            x = curves[0][0]
            y = np.array([c[1] for c in curves])
            ax.plot(x, y.mean(0), color=color, label=method)
            ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.15)
        ax.set_title(env, fontsize=10)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel("eval return (mean, min-max over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names (default: all)")
    ap.add_argument("--seeds", type=int, default=5, help="reported seeds per method (0..N-1)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the tuning sweep (first setting of SWEEP)")
    ap.add_argument("--quick", action="store_true", help="CartPole and Pendulum, 2 seeds, no sweep (rl_study_quick.*)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = ap.parse_args()
    import jax

    jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "eggroll-jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    tasks = ["CartPole-v1", "Pendulum-v1"] if args.quick else args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        ap.error(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    seeds = 2 if args.quick else args.seeds
    sweep = not (args.quick or args.no_sweep)
    path = args.out / ("rl_study_quick.json" if args.quick else "rl_study.json")
    record = json.loads(path.read_text()) if path.exists() else {"seeds": seeds, "sweep": sweep}
    if (record.get("seeds"), record.get("sweep")) != (seeds, sweep):
        ap.error(
            f"{path} holds a study with {record.get('seeds')} seeds and sweep {record.get('sweep')}, this run has "
            f"{seeds} and sweep {sweep}: it would replace that study; pass --out DIR (or delete {path.name} there)"
        )
    record.update(seeds=seeds, sweep=sweep, command=" ".join(["python benchmarks/rl_study.py", *sys.argv[1:]]))
    record.setdefault("tasks", {})
    for env in tasks:
        t0 = time.perf_counter()
        record["tasks"][env] = study_task(env, list(range(seeds)), sweep, print)
        record["tasks"][env]["study_seconds"] = time.perf_counter() - t0
        record["tasks"] = {k: record["tasks"][k] for k in TASKS if k in record["tasks"]}
        write(record, path)  # after every task: a long study that stops keeps what it finished


if __name__ == "__main__":
    main()
