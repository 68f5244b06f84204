"""Benchmark: train the integer EGG language model with integer EGGROLL under a wall-clock budget.

Trains on Python's ``pydoc_data.topics`` (90/10 split) and records the
validation bits/byte of the mean model against the unigram and bigram
baselines of the same split. Writes ``OUT/NAME.{json,md,png}`` (default
``benchmarks/results/lm_train.*``).

Run::

    python benchmarks/lm_train.py                   # 10 minutes, default settings
    python benchmarks/lm_train.py --minutes 2 --width 32
    python benchmarks/lm_train.py --minutes 60 --generations 27000 --name lm_train_60min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget, compile included")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--mlp-ratio", type=int, default=2, help="MLP hidden width / width")
    parser.add_argument("--population", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--sigma-shift", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--generations", type=int, default=1000, help="length of the threshold schedule (and run)")
    parser.add_argument("--alpha-start", type=float, default=1.0, help="z-test level at the start")
    parser.add_argument("--alpha-end", type=float, default=0.25, help="z-test level at the end of the schedule")
    parser.add_argument("--valid-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="lm_train", help="file stem of the results: OUT/NAME.{json,md,png}")
    parser.add_argument("--report-only", action="store_true", help="re-render md/png from OUT/NAME.json")
    args = parser.parse_args()
    if not args.name or Path(args.name).name != args.name:
        parser.error(f"--name is a file stem without a folder, got {args.name!r}: give the folder as --out")
    if args.report_only:
        result = json.loads((args.out / f"{args.name}.json").read_text())
        result.setdefault("command", "python benchmarks/lm_train.py --minutes 10 --generations 800")
        print(write_report(result, args.out, args.name))
        return

    import jax

    from eggroll.models import egg
    from eggroll.problems import text

    config = text.LMConfig(
        width=args.width, depth=args.depth, mlp_ratio=args.mlp_ratio, population=args.population, rank=args.rank,
        sigma_shift=args.sigma_shift, chunk=args.chunk, generations=args.generations, seed=args.seed,
        alpha_start=args.alpha_start, alpha_end=args.alpha_end,
    )  # fmt: skip
    train, valid = text.split_bytes(text.load_corpus(), config.valid_fraction)
    baselines = {
        "unigram_train": text.unigram_bits(train, train),
        "unigram_valid": text.unigram_bits(train, valid),
        "bigram_train": text.bigram_bits(train, train),
        "bigram_valid": text.bigram_bits(train, valid),
    }
    print("baselines (bits/byte):", {k: round(v, 3) for k, v in baselines.items()})
    load_before = os.getloadavg()
    task = text.make_task(config, train, valid)

    def show(record):
        if "valid_bpb" in record:
            print(
                f"gen {record['generation']:5d}  {record['elapsed']:6.1f}s  valid {record['valid_bpb']:.3f}"
                + (
                    f"  train {record['train_bpb']:.3f}  {record['tokens_per_s']:,.0f} tok/s"
                    if "train_bpb" in record
                    else ""
                ),
                flush=True,
            )

    t0 = time.perf_counter()
    carry, history = text.train_lm(task, time_budget=args.minutes * 60, valid_every=args.valid_every, callback=show)
    wall = time.perf_counter() - t0
    valid_curve = [(r["generation"], r["elapsed"], r["valid_bpb"]) for r in history if "valid_bpb" in r]

    def first_below(level):
        return next(({"generation": g, "seconds": round(t, 1)} for g, t, v in valid_curve if v < level), None)

    tps = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    result = {
        "config": dataclasses.asdict(config),
        "params": egg.num_params(carry.es_state.mean),
        "minutes": args.minutes,
        "wall_seconds": round(wall, 1),
        "generations_done": int(carry.generation),
        "baselines": baselines,
        "valid_start": valid_curve[0][2],
        "valid_final": valid_curve[-1][2],
        "valid_best": min(v for _, _, v in valid_curve),
        "below_unigram": first_below(baselines["unigram_valid"]),
        "below_bigram": first_below(baselines["bigram_valid"]),
        "median_tokens_per_s": sorted(tps)[len(tps) // 2] if tps else None,
        "sample": egg.generate(carry.es_state.mean, b"The ", 160, jax.random.key(0), 0.8).decode("utf-8", "replace"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "curve": [{"generation": g, "seconds": round(t, 1), "valid_bpb": v} for g, t, v in valid_curve],
        "train_curve": [(r["generation"], round(r["train_bpb"], 4)) for r in history if "train_bpb" in r],
    }
    result["command"] = "python benchmarks/lm_train.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(write_report(result, args.out, args.name))


def write_report(result: dict, out: Path, name: str = "lm_train") -> str:
    """Write ``name.md`` and ``name.png`` from a result record; return the markdown."""
    from eggroll.problems import text

    c, b = result["config"], result["baselines"]
    history = [{"generation": r["generation"], "valid_bpb": r["valid_bpb"]} for r in result["curve"]]
    history += [{"generation": g, "train_bpb": v} for g, v in result["train_curve"]]
    history.sort(key=lambda r: r["generation"])
    text.plot_learning_curve(
        history, b, out / f"{name}.png",
        title=f"EGG {c['depth']}x{c['width']}, N={c['population']}, rank {c['rank']}, "
        f"sigma 2^-{c['sigma_shift']}, {result['minutes']:g} min budget",
    )  # fmt: skip

    def when(hit):
        return f"generation {hit['generation']}, after {hit['seconds']:.0f} s" if hit else "not reached"

    m = result["machine"]
    md = [
        "# Integer EGG language model trained by integer EGGROLL on pydoc_data.topics",
        "",
        f"`{result['command']}` on {m['cpus']} CPU cores shared with other jobs (load average "
        f"{m['load_avg_before'][0]:.1f} before, {m['load_avg_after'][0]:.1f} after), jax {m['jax']}.",
        "",
        f"Model: {c['depth']} blocks of width {c['width']}, MLP ratio {c['mlp_ratio']} ({result['params']:,} int8 "
        "parameters). "
        f"Integer EGGROLL: population {c['population']}, rank {c['rank']}, sigma 2^-{c['sigma_shift']}, "
        f"chunk {c['chunk']} bytes per member, z-test level from {c['alpha_start']:g} to {c['alpha_end']:g} "
        f"over {c['generations']} generations.",
        "",
        "| | bits/byte (validation) |",
        "|---|---|",
        "| uniform | 8.000 |",
        f"| unigram baseline (same split) | {b['unigram_valid']:.3f} |",
        f"| bigram baseline (same split) | {b['bigram_valid']:.3f} |",
        f"| EGG at start | {result['valid_start']:.3f} |",
        f"| EGG after {result['generations_done']} generations ({result['wall_seconds'] / 60:.1f} min, "
        f"compile included) | {result['valid_final']:.3f} |",
        "",
        *(
            [f"- The run ended with its {c['generations']}-generation schedule, before the time budget."]
            if result["generations_done"] >= c["generations"] and result["wall_seconds"] < 60 * result["minutes"] - 30
            else []
        ),
        f"- Below the unigram baseline: {when(result['below_unigram'])}.",
        f"- Below the bigram baseline: {when(result['below_bigram'])}.",
        f"- Median throughput: {result['median_tokens_per_s'] or 0:,.0f} tokens/s across the population.",
        "",
        f"![learning curve]({name}.png)",
        "",
        "Sample from the final mean model (temperature 0.8, prompt `The `):",
        "",
        "```",
        "The " + result["sample"],
        "```",
        "",
        "Settings: `benchmarks/results/lm_sweep.md` (a sweep at equal training tokens; population 2048 with "
        "16-byte chunks and MLP ratio 2 gave the best bits/byte per second).",
    ]
    text_md = "\n".join(md) + "\n"
    (out / f"{name}.md").write_text(text_md)
    return text_md


if __name__ == "__main__":
    main()
