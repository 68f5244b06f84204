"""Where EGGROLL's ``tell`` spends its time, relative to one plain batched inference pass.

The GPU run of ``gpu_suite.py`` found ``tell`` costing 4.7 forward passes on the paper's 8192 x 8192 layer
and 9.5 on a Flax MLP, where its FLOPs (``A^T diag(w) B`` over the population) are about half a forward
pass. This benchmark splits ``tell`` into its parts on the same shapes, each timed beside plain inference
in one run:

- ``tell`` as the strategy runs it, in a generation that improves on the best member so far (the dense
  best member is built) and in one that does not;
- ``tell`` with ``track_best=False`` (no dense best member kept);
- the gradient estimate alone (regenerated factors and the one einsum per leaf);
- building the dense best member alone (``member_dense``);
- whole generations (ask, forward, tell in one jitted call), improving and not;
- with ``--compare FILE`` (another version of ``strategies/_core.py``: a change under consideration),
  its ``tell`` and generation on the same inputs, beside the installed one in the same run.

    python benchmarks/tell_cost.py                 # the GPU shapes (minutes on a CPU)
    python benchmarks/tell_cost.py --quick         # tiny shapes (seconds)
    python benchmarks/tell_cost.py --compare /tmp/other_core.py --out benchmarks/results/gpu

Writes ``tell_cost_<device>.{json,md}`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import core_throughput  # noqa: E402
import real_models  # noqa: E402

import eggroll  # noqa: E402
from eggroll.strategies import _core  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPES = {
    False: [("core", 8192, 1024), ("core", 8192, 4096), ("flax_mlp", 1024, 2048)],
    True: [("core", 64, 16), ("flax_mlp", 32, 16)],
}


def case(kind: str, width: int, population: int):
    """``(label, params, fitness, inference, xs)`` of one benchmark shape."""
    xs = jax.random.normal(jax.random.key(1), (population, width))
    if kind == "core":
        params = [jax.random.normal(jax.random.key(0), (width, width)) / math.sqrt(width)]

        def fitness(member, x):
            return jnp.mean(core_throughput.mlp(member, x) ** 2)

        def inference(prm, x):
            return jnp.mean(jnp.tanh(x @ prm[0]) ** 2, axis=-1)

        return f"one {width}x{width} tanh layer, population {population}", params, fitness, inference, xs
    params, fitness, inference = real_models.flax_case(real_models.make_mlp(width), xs)
    return f"Flax MLP 3 x nn.Dense({width}) + bias, population {population}", params, fitness, inference, xs


def strategy_and_config(params, population: int, track_best: bool = True):
    """The EGGROLL strategy of the suite and the static config its ``tell`` closes over."""
    seen = {}
    build = _core.build_strategy

    def spy(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        return build(cfg, *args, **kwargs)

    _core.build_strategy = spy
    try:
        es = eggroll.eggroll(
            population_size=population, solution=params, rank=1, optimizer=optax.sgd(1e-3), track_best=track_best
        )
    finally:
        _core.build_strategy = build
    return es, seen["cfg"]


def load_core(path: str):
    spec = importlib.util.spec_from_file_location("core_compared", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["core_compared"] = module  # flax's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def measure(kind: str, width: int, population: int, repeats: int, other=None) -> dict:
    label, params, fitness, inference, xs = case(kind, width, population)
    es, cfg = strategy_and_config(params, population)
    es_nobest, cfg_nobest = strategy_and_config(params, population, track_best=False)
    p = es.default_params
    state = es.init(jax.random.key(0), params, p)
    pop, improving = es.ask(jax.random.key(1), state, p)
    fwd = jax.jit(lambda pop_, x: eggroll.evaluate(fitness, pop_, x, in_axes=(0,)))
    fit = fwd(pop, xs)
    # the same state with a best-so-far nothing beats: a generation that does not improve on it
    steady = improving.replace(best_fitness=jnp.asarray(-jnp.inf, jnp.float32))
    nobest_state = es_nobest.ask(jax.random.key(1), es_nobest.init(jax.random.key(0), params, p), p)[1]
    w = _core.member_weights(cfg, fit)[0]
    w = w[0::2] - w[1::2] if cfg.antithetic else w

    tell = jax.jit(lambda s, f: _core.tell(cfg, None, pop, f, s, p)[0])
    tell_nobest = jax.jit(lambda s, f: _core.tell(cfg_nobest, None, pop, f, s, p)[0])
    grad = jax.jit(lambda s: _core.gradient(cfg, s, w))
    dense = jax.jit(lambda s: _core.member_dense(cfg, s, jnp.int32(0)))

    def generation_of(core_module):
        @jax.jit
        def generation(s, x):
            pop_, s = es.ask(jax.random.key(1), s, p)
            f = eggroll.evaluate(fitness, pop_, x, in_axes=(0,))
            return core_module.tell(cfg, None, pop_, f, s, p)[0]

        return generation

    gen = generation_of(_core)
    start_improving = state
    start_steady = state.replace(best_fitness=jnp.asarray(-jnp.inf, jnp.float32))
    inf = jax.jit(inference)
    calls = {
        "inference": lambda: inf(params, xs),
        "forward": lambda: fwd(pop, xs),
        "tell_improving": lambda: tell(improving, fit),
        "tell_steady": lambda: tell(steady, fit),
        "tell_no_best": lambda: tell_nobest(nobest_state, fit),
        "gradient": lambda: grad(improving),
        "dense_member": lambda: dense(improving),
        "generation_improving": lambda: gen(start_improving, xs),
        "generation_steady": lambda: gen(start_steady, xs),
    }
    if other is not None:
        tell_other = jax.jit(lambda s, f: other.tell(cfg, None, pop, f, s, p)[0])
        gen_other = generation_of(other)
        calls["other_tell_improving"] = lambda: tell_other(improving, fit)
        calls["other_tell_steady"] = lambda: tell_other(steady, fit)
        calls["other_generation_steady"] = lambda: gen_other(start_steady, xs)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(max(1, repeats // 3)):  # rounds, so that a burst of load hits every part alike
        for k, c in calls.items():
            times[k].append(core_throughput.bench(c, repeats=min(3, repeats)))
    t = {k: min(v) for k, v in times.items()}
    return {
        "label": label,
        "kind": kind,
        "width": width,
        "population": population,
        "vs_inference": {k: v / t["inference"] for k, v in t.items() if k != "inference"},
    }


ROWS = [
    ("forward", "forward pass (EGGROLL population)"),
    ("tell_improving", "tell, generation improves the best"),
    ("tell_steady", "tell, generation does not improve"),
    ("tell_no_best", "tell, track_best=False"),
    ("gradient", "gradient estimate alone"),
    ("dense_member", "dense best member alone"),
    ("generation_improving", "whole generation, improving"),
    ("generation_steady", "whole generation, not improving"),
    ("other_tell_improving", "--compare core: tell, improving"),
    ("other_tell_steady", "--compare core: tell, not improving"),
    ("other_generation_steady", "--compare core: whole generation, not improving"),
]


def markdown(r: dict) -> str:
    cases = r["cases"]
    lines = [
        f"# Where `tell` spends its time ({r['device']}, jax {r['jax']})",
        "",
        "Each figure is a time divided by plain batched inference of the same model on the same rows, "
        "measured in one run (best of interleaved repeats). Reproduce: `python benchmarks/tell_cost.py"
        + (" --quick" if r["quick"] else "")
        + "`.",
        "",
        "| part / inference | " + " | ".join(c["label"] for c in cases) + " |",
        "|---|" + "---|" * len(cases),
    ]
    for key, name in ROWS:
        if all(key in c["vs_inference"] for c in cases):
            lines.append(f"| {name} | " + " | ".join(f"{c['vs_inference'][key]:.2f}" for c in cases) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    ap.add_argument("--compare", default=None, help="another strategies/_core.py to time beside the installed one")
    ap.add_argument("--out", default=OUT, help="folder for tell_cost_<device>.{json,md}")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    other = load_core(args.compare) if args.compare else None
    device = jax.devices()[0].device_kind
    r = {"device": device, "jax": jax.__version__, "quick": args.quick, "cases": []}
    name = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_").lower() + ("_quick" if args.quick else "")
    os.makedirs(args.out, exist_ok=True)
    for shape in SHAPES[args.quick]:
        t0 = time.perf_counter()
        r["cases"].append(measure(*shape, repeats=1 if args.quick else args.repeats, other=other))
        print(f"{r['cases'][-1]['label']}: {time.perf_counter() - t0:.1f} s", flush=True)
        with open(os.path.join(args.out, f"tell_cost_{name}.json"), "w") as f:
            json.dump(r, f, indent=1)
        with open(os.path.join(args.out, f"tell_cost_{name}.md"), "w") as f:
            f.write(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
