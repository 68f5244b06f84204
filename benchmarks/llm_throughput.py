"""Generation throughput: eggroll (plain and EGGROLL population) vs transformers, same weights, same run.

Three generators make the same number of tokens (batch ``B`` prompts of ``P``
random tokens, ``T`` new tokens, greedy, no stop token so every row runs to the
end), on the same CPU, in one process, timed in turns (A, B, C, A, B, C, ...)
so that load from other processes hits all of them alike:

* ``transformers``: ``AutoModelForCausalLM.generate`` (PyTorch CPU, float32) on
  the Hugging Face export of the very params eggroll runs (``save_hf``), so the
  weights are identical;
* ``eggroll plain``: :func:`eggroll.models.llama.generate_ids`, the unperturbed model;
* ``eggroll population``: :func:`~eggroll.models.llama.generate_population`:
  ``B`` low-rank perturbed members (rank ``r``), one prompt each, in one batched
  pass (shared base GEMM + a rank-r correction per member).

Also measured, for eggroll: the first call (compile + run) of each generator;
where a call's time goes (prefill = the ``T = 1`` call, decode per token = the
rest over ``T - 1``; the output head and greedy sampling timed on their own for
one step); and whether a second call with other prompts, or prompts of another
length in the same padding bucket, compiles again (jit cache sizes).

Each timing is the best of ``--repeats`` (wall clock, and process CPU time
beside it: on a shared machine the CPU time is the steadier figure).

``--threads 1`` runs both libraries on one thread (XLA's Eigen pool off,
``torch.set_num_threads(1)``): on a machine shared with other processes this is
the fairer comparison, because a thread pool that spins while its peer thread
is descheduled (PyTorch's OpenMP pool) loses far more than a single thread does.

Run: ``python benchmarks/llm_throughput.py [--threads 1]`` (SmolLM2-135M-Instruct;
5 to 20 minutes on a busy 2-core machine). Each setting's figures go under its
own key of benchmarks/results/llm_throughput.json; the markdown shows them all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time


def _threads_from_argv() -> int | None:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return None


if __name__ == "__main__" and _threads_from_argv() == 1:  # before JAX starts its CPU client
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import eggroll  # noqa: E402
from eggroll.models import llama  # noqa: E402
from eggroll.models.io import hf, load_model  # noqa: E402
from eggroll.models.llama import generate_ids, generate_population  # noqa: E402


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - c0


def _best(fns: dict, repeats: int) -> dict:
    """Best wall / CPU seconds of each function, calls interleaved (one warm-up call each first)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    runs = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            runs[k].append(_timed(fn))
    return {k: {"wall": min(w for w, _ in v), "cpu": min(c for _, c in v)} for k, v in runs.items()}


def measure(config, params, n: int, m: int, p: int, t: int, *, rank: int = 1, repeats: int = 3) -> dict:
    """Plain batched generation vs EGGROLL population generation only (no transformers), for other suites.

    ``n`` members with ``m`` prompts each of ``p`` random tokens, ``t`` new tokens, no stop
    token; best wall-clock time of ``repeats`` interleaved calls after one compile call each.
    """
    rng = np.random.default_rng(0)
    ids = rng.integers(100, config.vocab_size - 1, size=(n, m, p)).astype(np.int32)
    mask = np.ones((n, m, p), bool)
    key = jax.random.PRNGKey(0)
    es = eggroll.eggroll(population_size=n, solution=params, rank=rank, optimizer=optax.sgd(1e-3))
    es_params = es.default_params.replace(sigma_init=1e-3)
    population, _ = es.ask(key, es.init(key, params, es_params), es_params)
    pop_fn = jax.jit(generate_population, static_argnames=("config", "max_new_tokens", "stop_ids", "pad_id"))
    flat_ids, flat_mask = ids.reshape(n * m, p), mask.reshape(n * m, p)
    best = _best(
        {
            "plain": lambda: generate_ids(config, params, flat_ids, flat_mask, key, max_new_tokens=t),
            "population": lambda: pop_fn(config, population, ids, mask, key, max_new_tokens=t),
        },
        repeats,
    )
    t_plain, t_pop = best["plain"]["wall"], best["population"]["wall"]
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
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="1: both libraries single-threaded")
    ap.add_argument("--no-transformers", action="store_true", help="skip the transformers side")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()

    config, params, tok = load_model(args.model)
    b, p, t = args.batch, args.prompt_len, args.new_tokens
    rng = np.random.default_rng(0)
    ids = rng.integers(100, config.vocab_size - 1, size=(b, p)).astype(np.int32)
    ids2 = rng.integers(100, config.vocab_size - 1, size=(b, p)).astype(np.int32)
    mask = np.ones((b, p), bool)
    key = jax.random.PRNGKey(0)

    es = eggroll.eggroll(population_size=b, solution=params, rank=args.rank, optimizer=optax.sgd(1e-3))
    es_params = es.default_params.replace(sigma_init=1e-3)
    state = es.init(key, params, es_params)
    population, state = es.ask(key, state, es_params)
    pop_fn = jax.jit(generate_population, static_argnames=("config", "max_new_tokens", "stop_ids", "pad_id"))

    def plain(n_new=t, x=ids):
        return generate_ids(config, params, x, mask, key, max_new_tokens=n_new)

    def plain_unrolled(n_new=t, x=ids):
        return generate_ids(config, params, x, mask, key, max_new_tokens=n_new, unroll_layers=True)

    def pop(n_new=t, x=ids):
        return pop_fn(config, population, x[:, None, :], mask[:, None, :], key, max_new_tokens=n_new)

    # First calls: compile + one run.
    first = {}
    for name, fn in (("plain", plain), ("plain_unrolled", plain_unrolled), ("population", pop)):
        first[name] = _timed(fn)[0]
    cache_before = generate_ids._cache_size(), pop_fn._cache_size()
    jax.block_until_ready(plain(x=ids2))
    jax.block_until_ready(pop(x=ids2))
    recompiled_new_prompts = (generate_ids._cache_size(), pop_fn._cache_size()) != cache_before
    # The friendly front end pads prompt lengths to buckets: 20 and 27 tokens share one.
    n0 = generate_ids._cache_size()
    llama.generate(config, params, [list(range(100, 120))] * 2, max_new_tokens=4)
    n1 = generate_ids._cache_size()
    llama.generate(config, params, [list(range(100, 127))] * 2, max_new_tokens=4)
    recompiled_other_length = generate_ids._cache_size() != n1
    del n0

    # Where eggroll's time goes: the output head and greedy sampling for one decode step.
    head_w = llama._head_weight(config, params, pretranspose=True)
    h = jnp.asarray(rng.normal(size=(b, config.dim)), jnp.float32)
    head_fn = jax.jit(lambda h, w: llama._head(config, params, w, h))
    logits = head_fn(h, head_w)
    sample_fn = jax.jit(lambda lg: llama._sample(lg, key, 0.0))

    fns = {
        "plain": plain,
        "plain_unrolled": plain_unrolled,
        "population": pop,
        "plain_prefill": lambda: plain(1),
        "population_prefill": lambda: pop(1),
        "head_step": lambda: head_fn(h, head_w),
        "sample_step": lambda: sample_fn(logits),
    }
    hf_model = None
    if not args.no_transformers:
        import torch
        import transformers

        if args.threads:
            torch.set_num_threads(args.threads)
        d = tempfile.mkdtemp(prefix="eggroll_hf_")
        hf.save_hf(d, config, params, tok)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        hf_model.generation_config.eos_token_id = None
        hf_ids, hf_mask = torch.tensor(ids, dtype=torch.long), torch.ones((b, p), dtype=torch.long)

        def hf_gen(n_new=t):
            with torch.no_grad():
                return hf_model.generate(
                    input_ids=hf_ids, attention_mask=hf_mask, max_new_tokens=n_new, do_sample=False, pad_token_id=0
                )

        fns["transformers"] = hf_gen
        fns["transformers_prefill"] = lambda: hf_gen(1)
        hf_tokens = hf_gen()[:, p:].numpy()
        greedy_agree = float(np.mean(hf_tokens == np.asarray(plain().tokens)))

    best = _best(fns, args.repeats)
    tokens = b * t

    def per_token(name):  # decode seconds per step (whole batch)
        return {m: (best[name][m] - best[name + "_prefill"][m]) / (t - 1) for m in ("wall", "cpu")}

    best["plain_unrolled_prefill"] = best["plain_prefill"]  # the same prefill program
    res = {
        "threads": args.threads or "default",
        "model": args.model or "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "batch": b,
        "prompt_len": p,
        "new_tokens": t,
        "rank": args.rank,
        "repeats": args.repeats,
        "seconds": best,
        "tokens_per_s": {
            k: tokens / best[k]["wall"] for k in ("plain", "plain_unrolled", "population", "transformers") if k in best
        },
        "first_call_seconds": first,
        "recompiles_for_new_prompts_same_shape": recompiled_new_prompts,
        "recompiles_for_other_prompt_length_same_bucket": recompiled_other_length,
        "breakdown": {
            k: {"prefill": best[k + "_prefill"], "decode_per_token": per_token(k)}
            for k in ("plain", "plain_unrolled", "population", "transformers")
            if k in best
        },
        "head_step": best["head_step"],
        "sample_step": best["sample_step"],
        "ratios": {
            "population_over_plain": {m: best["plain"][m] / best["population"][m] for m in ("wall", "cpu")},
            "population_over_plain_unrolled": {
                m: best["plain_unrolled"][m] / best["population"][m] for m in ("wall", "cpu")
            },
        },
    }
    if hf_model is not None:
        res["ratios"]["plain_over_transformers"] = {
            m: best["transformers"][m] / best["plain"][m] for m in ("wall", "cpu")
        }
        res["ratios"]["plain_unrolled_over_transformers"] = {
            m: best["transformers"][m] / best["plain_unrolled"][m] for m in ("wall", "cpu")
        }
        res["ratios"]["population_over_transformers"] = {
            m: best["transformers"][m] / best["population"][m] for m in ("wall", "cpu")
        }
        res["greedy_tokens_agree_with_transformers"] = greedy_agree
    res["compile_seconds_estimate"] = {k: first[k] - best[k]["wall"] for k in first}
    print(json.dumps(res, indent=1))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "llm_throughput.json")
    runs = {}
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)
        runs = runs if "threads_default" in runs or "threads_1" in runs else {}  # an older layout: replaced
    runs[f"threads_{res['threads']}"] = res
    with open(path, "w") as f:
        json.dump(runs, f, indent=1)
    with open(os.path.join(args.out, "llm_throughput.md"), "w") as f:
        f.write(_markdown(runs))


def _markdown(runs: dict) -> str:
    head = [
        "# LLM generation throughput: eggroll vs transformers, plain and EGGROLL population",
        "",
        "Same weights (transformers runs eggroll's Hugging Face export of the GGUF's float32 params), same",
        "batch, same run, calls interleaved. Ratios are what to read: absolute times depend on the load that",
        "other processes put on this shared machine.",
        "",
    ]
    body = []
    for key in ("threads_1", "threads_default"):
        if key in runs:
            body += _section(runs[key])
            if runs[key].get("note"):
                body += [runs[key]["note"], ""]
    return "\n".join(head + body + ["Reproduce: `python benchmarks/llm_throughput.py [--threads 1]`", ""])


def _section(res: dict) -> list[str]:
    b, p, t = res["batch"], res["prompt_len"], res["new_tokens"]
    s, r = res["seconds"], res["ratios"]
    threads = "one thread each" if res["threads"] == 1 else "default threads (all cores)"
    lines = [
        f"## {threads}",
        "",
        f"Model: {res['model']}; device: {res['device']} ({res['platform']}, {res['cpu_count']} cores, "
        f"1-min load average {res['load_average_1min']:.1f} at the end: the machine is shared); batch {b}, "
        f"prompt {p} tokens, {t} new tokens, greedy, rank {res['rank']}. Best of {res['repeats']} interleaved "
        "calls; wall clock and process CPU time.",
        "",
        "| generator | tokens/s (wall) | wall s | CPU s | prefill wall s | decode wall ms/token-step |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "transformers": "transformers `generate` (torch CPU, same weights)",
        "plain": "eggroll plain (`generate_ids`, default: layers in a `lax.scan`)",
        "plain_unrolled": "eggroll plain, `unroll_layers=True` (decode layers unrolled)",
        "population": f"eggroll population ({b} members, rank {res['rank']})",
    }
    for k, label in names.items():
        if k not in s:
            continue
        bd = res["breakdown"][k]
        lines.append(
            f"| {label} | {res['tokens_per_s'][k]:.1f} | {s[k]['wall']:.2f} | {s[k]['cpu']:.2f} | "
            f"{bd['prefill']['wall']:.2f} | {1000 * bd['decode_per_token']['wall']:.0f} |"
        )
    lines += ["", "Ratios (higher is better for the numerator):", ""]
    for k, v in r.items():
        lines.append(f"* {k.replace('_', ' ')}: **{v['wall']:.2f}** wall, {v['cpu']:.2f} CPU time")
    lines += [
        "",
        "eggroll details:",
        "",
        "* first call (compile + run), and compile alone estimated as first call minus best call: "
        + ", ".join(
            f"{k.replace('_', ' ')} {res['first_call_seconds'][k]:.1f} s ({res['compile_seconds_estimate'][k]:.1f} s)"
            for k in res["first_call_seconds"]
        ),
        f"* recompiles for new prompts of the same shape: {res['recompiles_for_new_prompts_same_shape']}; "
        f"for another prompt length in the same bucket (`generate`, 20 vs 27 tokens): "
        f"{res['recompiles_for_other_prompt_length_same_bucket']}",
        f"* one decode step's output head ({b} x dim @ dim x vocab): "
        f"{1000 * res['head_step']['wall']:.0f} ms; greedy sampling: {1000 * res['sample_step']['wall']:.1f} ms",
        "* no host transfer inside a call: the decode loop is one `lax.while_loop` in one jitted program;"
        " the host sees the tokens once, at the end",
    ]
    if "greedy_tokens_agree_with_transformers" in res:
        lines.append(
            f"* greedy tokens equal to transformers': {100 * res['greedy_tokens_agree_with_transformers']:.1f}%"
        )
    return lines + [""]


if __name__ == "__main__":
    main()
