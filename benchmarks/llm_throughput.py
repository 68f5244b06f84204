"""Generation throughput of an EGGROLL population vs plain batched inference (same batch, same run).

Both sides generate the same number of sequences with the same prompt length
and the same number of new tokens (no stop tokens, so every row runs to the
end):

* ``inference``: the unperturbed model, ``generate_ids`` on a batch of
  ``members * prompts_per_member`` prompts;
* ``eggroll``: ``generate_population``: ``members`` low-rank perturbed models
  (rank ``r``), ``prompts_per_member`` prompts each, in one batched pass (shared
  base GEMM + a rank-r correction per member; no per-member weights).

The ratio eggroll / inference is what the EGGROLL paper reports as 0.91 on a
GH200 (one 8192^2 layer, batch 1024). Timings are the best of ``--repeats``
calls after a compile call; prefill and decode are both included.

Run: ``python benchmarks/llm_throughput.py`` (SmolLM2-135M-Instruct, CPU) or with
``--model path.gguf``. Writes benchmarks/results/llm_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
import optax

import eggroll
from eggroll.models.io import load_model
from eggroll.models.llama import generate_ids, generate_population


def measure(config, params, n: int, m: int, p: int, t: int, *, rank: int = 1, repeats: int = 3) -> dict:
    """Best times of plain batched generation and EGGROLL population generation, same batch, same run.

    ``n`` members with ``m`` prompts each of ``p`` random tokens, ``t`` new tokens (no stop token).
    """
    rng = np.random.default_rng(0)
    ids = rng.integers(100, config.vocab_size - 1, size=(n, m, p)).astype(np.int32)
    mask = np.ones((n, m, p), bool)
    key = jax.random.PRNGKey(0)

    es = eggroll.eggroll(population_size=n, solution=params, rank=rank, optimizer=optax.sgd(1e-3))
    es_params = es.default_params.replace(sigma_init=1e-3)
    state = es.init(key, params, es_params)
    population, state = es.ask(key, state, es_params)

    plain = lambda: generate_ids(config, params, ids.reshape(n * m, p), mask.reshape(n * m, p), key, max_new_tokens=t)
    pop_fn = jax.jit(generate_population, static_argnames=("config", "max_new_tokens", "stop_ids", "pad_id"))
    perturbed = lambda: pop_fn(config, population, ids, mask, key, max_new_tokens=t)

    def best_time(fn):
        jax.block_until_ready(fn())  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        return min(times)

    t_plain = best_time(plain)
    t_pop = best_time(perturbed)
    tokens = n * m * t
    return {
        "members": n,
        "prompts_per_member": m,
        "batch": n * m,
        "prompt_len": p,
        "new_tokens": t,
        "rank": rank,
        "inference_tokens_per_s": tokens / t_plain,
        "eggroll_tokens_per_s": tokens / t_pop,
        "ratio_eggroll_over_inference": t_plain / t_pop,
        "seconds_inference": t_plain,
        "seconds_eggroll": t_pop,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--prompts-per-member", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()

    config, params, tok = load_model(args.model)
    n, m, p, t = args.members, args.prompts_per_member, args.prompt_len, args.new_tokens
    res = {
        "model": args.model or "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)",
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(),
        **measure(config, params, n, m, p, t, rank=args.rank, repeats=args.repeats),
    }
    t_plain, t_pop = res["seconds_inference"], res["seconds_eggroll"]
    print(json.dumps(res, indent=1))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "llm_throughput.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "llm_throughput.md"), "w") as f:
        f.write("# LLM generation throughput: EGGROLL population vs plain batched inference\n\n")
        f.write(f"Model: {res['model']}; device: {res['device']}; batch {n * m} sequences ")
        f.write(f"({n} members x {m} prompts), prompt {p} tokens, {t} new tokens, rank {args.rank}.\n\n")
        f.write("| | tokens/s | seconds |\n|---|---|---|\n")
        f.write(f"| plain batched inference (unperturbed) | {res['inference_tokens_per_s']:.1f} | {t_plain:.2f} |\n")
        f.write(f"| EGGROLL population (low-rank members) | {res['eggroll_tokens_per_s']:.1f} | {t_pop:.2f} |\n\n")
        f.write(f"Ratio EGGROLL / inference: **{res['ratio_eggroll_over_inference']:.2f}** (paper: 0.91 on a GH200).\n")
        f.write("\nReproduce: `python benchmarks/llm_throughput.py`\n")


if __name__ == "__main__":
    main()
