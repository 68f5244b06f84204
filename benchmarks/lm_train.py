"""Benchmark: train the integer EGG language model with integer EGGROLL under a wall-clock budget.

Trains on Python's ``pydoc_data.topics`` (90/10 split) and records the
validation bits/byte of the mean model against the unigram and bigram
baselines of the same split. Writes ``benchmarks/results/lm_train.{json,md,png}``.

Run::

    python benchmarks/lm_train.py                   # 10 minutes, default settings
    python benchmarks/lm_train.py --minutes 2 --width 32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget, compile included")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--population", type=int, default=512)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--sigma-shift", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--generations", type=int, default=1200, help="length of the threshold schedule")
    parser.add_argument("--valid-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import jax

    from eggroll.models import egg
    from eggroll.problems import text

    config = text.LMConfig(
        width=args.width, depth=args.depth, population=args.population, rank=args.rank,
        sigma_shift=args.sigma_shift, chunk=args.chunk, generations=args.generations, seed=args.seed,
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_train.json").write_text(json.dumps(result, indent=1))
    text.plot_learning_curve(
        history, baselines, args.out / "lm_train.png",
        title=f"EGG {config.depth}x{config.width}, N={config.population}, rank {config.rank}, "
        f"sigma 2^-{config.sigma_shift}, {args.minutes:g} min",
    )  # fmt: skip
    md = [
        "# Integer EGG language model, integer EGGROLL, pydoc_data.topics",
        "",
        f"`python benchmarks/lm_train.py --minutes {args.minutes:g}` on {os.cpu_count()} shared CPU cores "
        f"(load average {load_before[0]:.1f} before the run).",
        "",
        f"Model: {config.depth} blocks x width {config.width} ({result['params']:,} int8 parameters); "
        f"population {config.population}, rank {config.rank}, sigma 2^-{config.sigma_shift}, "
        f"chunk {config.chunk} bytes, threshold schedule over {config.generations} generations.",
        "",
        "| | bits/byte (valid) |",
        "|---|---|",
        "| uniform | 8.000 |",
        f"| unigram baseline | {baselines['unigram_valid']:.3f} |",
        f"| bigram baseline | {baselines['bigram_valid']:.3f} |",
        f"| EGG at start | {result['valid_start']:.3f} |",
        f"| EGG after {result['generations_done']} generations ({wall / 60:.1f} min) | {result['valid_final']:.3f} |",
        "",
        f"Below the unigram baseline: {result['below_unigram'] or 'not reached'}; "
        f"below the bigram baseline: {result['below_bigram'] or 'not reached'}.",
        f"Median throughput {result['median_tokens_per_s'] or 0:,.0f} tokens/s across the population.",
        "",
        "![learning curve](lm_train.png)",
        "",
        "Sample (temperature 0.8, prompt `The `):",
        "",
        "```",
        "The " + result["sample"],
        "```",
    ]
    (args.out / "lm_train.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:16]))


if __name__ == "__main__":
    main()
