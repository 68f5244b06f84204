"""Held-out reward of SmolLM2-135M-Instruct before and after a fixed CPU budget of EGGROLL fine-tuning.

Runs :func:`eggroll.finetune.finetune` generation by generation until the
wall-clock budget (``--budget`` seconds, compile included) is spent, then
evaluates the base model and the fine-tuned mean greedily on the same held-out
prompts. Writes benchmarks/results/llm_finetune.{json,md,png}.

Run: ``python benchmarks/llm_finetune.py --task format --budget 600``; on a GPU
``--task countdown --budget 3600 --population 256`` is the paper-like setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from eggroll.finetune import FinetuneConfig, finetune, plot_history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="format")
    ap.add_argument("--model", default=None)
    ap.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds of fine-tuning")
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=4e-3)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--eval-prompts", type=int, default=24)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()

    cfg = FinetuneConfig(
        task=args.task,
        model=args.model,
        generations=100_000,
        population=args.population,
        prompts_per_generation=args.prompts,
        sigma=args.sigma,
        learning_rate=args.lr,
        max_new_tokens=args.max_new_tokens,
        eval_every=100_000,
        eval_prompts=args.eval_prompts,
        layers=args.layers,
    )
    t0 = time.perf_counter()

    def stop_when_spent(rec: dict) -> bool:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}, flush=True)
        return rec["generation"] > 0 and time.perf_counter() - t0 > args.budget

    result = finetune(cfg, callback=stop_when_spent)
    spent = time.perf_counter() - t0
    (_, r0, a0), (g1, r1, a1) = result.evals[0], result.evals[-1]
    gens = result.history
    res = {
        "task": args.task,
        "model": args.model or "SmolLM2-135M-Instruct",
        "config": dataclasses.asdict(cfg),
        "budget_s": args.budget,
        "spent_s": spent,
        "generations": g1,
        "base_eval_reward": r0,
        "base_eval_accuracy": a0,
        "final_eval_reward": r1,
        "final_eval_accuracy": a1,
        "final_sample": gens[-1].get("eval_sample"),
        "history": gens,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "llm_finetune.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot_history(
        result,
        os.path.join(args.out, "llm_finetune.png"),
        title=f"EGGROLL on SmolLM2-135M, task {args.task}, {args.budget:.0f} s CPU",
    )
    with open(os.path.join(args.out, "llm_finetune.md"), "w") as f:
        f.write(f"# EGGROLL fine-tuning of {res['model']} on `{args.task}` ({args.budget:.0f} s budget)\n\n")
        f.write(f"N={args.population}, prompts/generation={args.prompts}, sigma={args.sigma}, ")
        f.write(f"rank 1, greedy, {args.max_new_tokens} new tokens; {len(gens)} generations in {spent:.0f} s.\n\n")
        f.write("| | held-out reward | held-out accuracy |\n|---|---|---|\n")
        f.write(f"| base model | {r0:.3f} | {a0:.1%} |\n")
        f.write(f"| after EGGROLL | {r1:.3f} | {a1:.1%} |\n\n")
        f.write(f"Sample after: {res['final_sample']!r}\n\n")
        f.write(f"Reproduce: `python benchmarks/llm_finetune.py --task {args.task} --budget {args.budget:.0f}`\n")
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
