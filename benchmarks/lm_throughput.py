"""Benchmark: tokens/s of the int8 EGG population vs the same model in float32 with float low-rank noise.

Both sides evaluate a whole population on one generation's chunks (forward
pass plus the bits-per-byte fitness) in one jitted call:

* integer: :func:`eggroll.models.egg.apply` on integer-EGGROLL members
  (``int8`` weights and activations, ``int32`` accumulators, ``int8`` noise
  sliced from a table at hashed offsets);
* float32: :func:`eggroll.models.egg.emulate` in ``float32`` on float EGGROLL
  members (:class:`eggroll.lowrank.LowRank`, ``W + a b^T`` with ``a, b`` sliced
  from a ``float32`` Gaussian table at the same offsets; vectors get float noise).
  It is the same architecture with the same rounding and clipping written as
  float operations.

The two are timed alternately in the same process (best of ``--repeats``), so
the ratio is not skewed by other load on the shared machine. Writes
``benchmarks/results/lm_throughput.{json,md}``.

Run::

    python benchmarks/lm_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _float_member(pop, i, table_f, rank, sigma):
    import jax
    import jax.numpy as jnp

    from eggroll.lowrank import LowRank
    from eggroll.strategies import int_eggroll as ie

    leaves, treedef = jax.tree.flatten(pop.mean)
    sign = (1 - 2 * (i % 2)).astype(jnp.float32)
    out = []
    for leaf, w in enumerate(leaves):
        wf = w.astype(jnp.float32)
        if w.ndim == 2:
            m, n = w.shape
            need = (m + n) * rank
            off = ie._offset(pop.seed, leaf, pop.counter, i // 2, need, table_f.size)
            seg = jax.lax.dynamic_slice_in_dim(table_f, off, need).reshape(m + n, rank)
            out.append(LowRank(wf, seg[:m] * (sign * sigma * 16.0 / rank**0.5), seg[m:]))
        else:
            (n,) = w.shape
            off = ie._offset(pop.seed, leaf, pop.counter, i // 2, n, table_f.size)
            out.append(wf + sign * sigma * 16.0 * jax.lax.dynamic_slice_in_dim(table_f, off, n))
    return jax.tree.unflatten(treedef, out)


def measure(width: int, depth: int, population: int, chunk: int, rank: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from eggroll.models import egg
    from eggroll.problems import text
    from eggroll.strategies import int_eggroll as ie

    cfg = egg.EggConfig(width, depth)
    params = egg.init(jax.random.key(0), cfg)
    es = ie.int_eggroll(population, params, rank=rank, sigma_shift=3)
    state = es.init(jax.random.key(1), params, es.default_params)
    pop, _ = es.ask(jax.random.key(3), state, es.default_params)
    table_f = jax.random.normal(jax.random.key(2), state.table.shape, jnp.float32)
    data = text.split_bytes(text.load_corpus())[0]
    tokens = jnp.asarray(data[: population * (chunk + 1)].reshape(population, chunk + 1).astype("int32"))
    xs, ys = tokens[:, :-1], tokens[:, 1:]
    hidden = jnp.zeros((population, depth, width), jnp.int8)

    @jax.jit
    def int_population(pop, hidden, xs, ys):
        def one(i, h, x, y):
            logits, h = egg.apply(ie.member(pop, i, rank), x, h)
            return text.bits_per_byte(logits, y), h

        return jax.vmap(one)(pop.index, hidden, xs, ys)

    @jax.jit
    def float_population(pop, table_f, hidden, xs, ys):
        def one(i, h, x, y):
            logits, h = egg.emulate(_float_member(pop, i, table_f, rank, 2.0**-3), x, h, jnp.float32)
            return text.bits_per_byte(logits, y), h

        return jax.vmap(one)(pop.index, hidden.astype(jnp.float32), xs, ys)

    runs = {
        "int8": lambda: int_population(pop, hidden, xs, ys),
        "float32": lambda: float_population(pop, table_f, hidden, xs, ys),
    }
    compile_s = {}
    for name, fn in runs.items():
        t = time.perf_counter()
        jax.block_until_ready(fn())
        compile_s[name] = time.perf_counter() - t
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():  # alternate, so both see the same background load
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t)
    tokens_per_call = population * chunk
    tps = {name: tokens_per_call / sec for name, sec in best.items()}
    return {
        "width": width,
        "depth": depth,
        "population": population,
        "chunk": chunk,
        "rank": rank,
        "params": egg.num_params(params),
        "seconds": best,
        "compile_seconds": compile_s,
        "tokens_per_s": tps,
        "int8_over_float32": tps["int8"] / tps["float32"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--populations", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import jax

    rows = []
    for width in args.widths:
        for population in args.populations:
            row = measure(width, args.depth, population, args.chunk, args.rank, args.repeats)
            rows.append(row)
            print(
                f"width {width:4d}  N {population:5d}: int8 {row['tokens_per_s']['int8']:>10,.0f} tok/s   "
                f"float32 {row['tokens_per_s']['float32']:>10,.0f} tok/s   ratio {row['int8_over_float32']:.2f}",
                flush=True,
            )
    meta = {
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_throughput.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=1))
    md = [
        "# Throughput: int8 EGG + integer EGGROLL vs float32 EGG + float low-rank EGGROLL",
        "",
        f"`python benchmarks/lm_throughput.py` on {meta['device']} ({meta['cpus']} shared cores, load average "
        f"{meta['load_avg'][0]:.1f}); tokens/s across the population for one generation's forward pass and "
        f"fitness, {args.depth} blocks, chunk {args.chunk}, rank {args.rank}; "
        f"best of {args.repeats}, timed alternately.",
        "",
        "| width | population | params | int8 tok/s | float32 tok/s | int8 / float32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['width']} | {r['population']} | {r['params']:,} | {r['tokens_per_s']['int8']:,.0f} | "
            f"{r['tokens_per_s']['float32']:,.0f} | {r['int8_over_float32']:.2f} |"
        )
    (args.out / "lm_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
