"""Scaling: generation throughput on 1, 2, 4, 8 devices and bytes exchanged per generation.

Each device count runs in its own subprocess with its own
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (fake CPU devices here:
they share the same cores, so this measures the overhead and correctness of
sharding, not a speed-up; on a machine with D accelerators the same script
measures real scaling). Writes benchmarks/results/scaling.{json,md}.

    python benchmarks/scaling.py            # 2 x 256 MLP, population 512
    python benchmarks/scaling.py --quick    # small sizes, for a smoke test

What is measured:
  throughput   generations/s and member evaluations/s of a jitted sharded
               generation (``eggroll.parallel.generation_step(mesh=...)``) for
               EGGROLL and OpenAI-ES, and the same without a mesh, in the same
               subprocess (ratio = overhead of the sharded program)
  bytes        per device and generation, from the collectives of the compiled
               8-device program, for growing parameter counts; next to it what
               a data-parallel gradient all-reduce would move (4 bytes x
               parameters), the usual alternative to regenerating the noise
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _problem(width: int, layers: int, pop: int, strategy: str):
    import jax.numpy as jnp
    import optax

    import eggroll

    sol = {f"w{i}": jnp.full((width, width), 0.01) for i in range(layers)}
    sol.update({f"b{i}": jnp.zeros(width) for i in range(layers)})
    x = jnp.linspace(-1.0, 1.0, 4 * width).reshape(4, width)

    def fitness(member, key):
        del key
        h = x
        for i in range(layers):
            h = jnp.tanh(eggroll.lowrank.matmul(h, member[f"w{i}"]) + member[f"b{i}"][None])
        return jnp.mean((h - 0.1) ** 2)

    make = eggroll.eggroll if strategy == "eggroll" else eggroll.open_es
    es = make(population_size=pop, solution=sol, optimizer=optax.adam(0.01))
    return es, fitness, sol


def _time_step(step, es, sol, repeats: int) -> tuple[float, float]:
    """Median seconds per generation (10 generations per timing) and the compile+first-call time."""
    import jax

    p = es.default_params
    state = es.init(jax.random.key(0), sol, p)
    t0 = time.perf_counter()
    state, _, m = step(jax.random.key(1), state, p)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        for g in range(10):
            state, _, m = step(jax.random.fold_in(jax.random.key(2), 10 * r + g), state, p)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - t) / 10)
    return statistics.median(times), first


def child(devices: int, width: int, layers: int, pop: int, repeats: int) -> dict:
    """Runs inside a subprocess with ``devices`` fake devices."""
    import jax

    from eggroll import parallel

    assert len(jax.devices()) == devices, jax.devices()
    out = {"devices": devices}
    for strategy in ("eggroll", "open_es"):
        es, fitness, sol = _problem(width, layers, pop, strategy)
        sharded, first = _time_step(
            parallel.generation_step(es, fitness, mesh=parallel.make_mesh(devices)), es, sol, repeats
        )
        plain, _ = _time_step(parallel.generation_step(es, fitness), es, sol, repeats)
        out[strategy] = {
            "s_per_generation": sharded,
            "generations_per_s": 1.0 / sharded,
            "evaluations_per_s": pop / sharded,
            "no_mesh_s_per_generation": plain,
            "sharded_over_no_mesh_time": sharded / plain,
            "compile_and_first_call_s": first,
        }
    return out


def comm_bytes(width: int, layers: int, pop: int, devices: int) -> dict:
    """Bytes in the collectives of the compiled ``devices``-way generation (needs that many devices)."""
    import jax

    from eggroll import parallel

    mesh = parallel.make_mesh(devices)
    row = {"width": width, "layers": layers, "population": pop, "devices": devices}
    for strategy in ("eggroll", "open_es"):
        es, fitness, sol = _problem(width, layers, pop, strategy)
        row["params"] = sum(x.size for x in jax.tree.leaves(sol))
        p = es.default_params
        state = es.init(jax.random.key(0), sol, p)
        hlo = parallel.generation_step(es, fitness, mesh=mesh).lower(jax.random.key(1), state, p).compile().as_text()
        found = parallel.collectives(hlo)
        row[f"{strategy}_bytes"] = sum(c.bytes for c in found)
        row[f"{strategy}_collectives"] = [f"{c.op} {c.dtypes[0]}{list(c.shapes[0])}" for c in found]
    row["gradient_allreduce_bytes"] = 4 * row["params"]
    return row


def _run_child(devices: int, args) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, "--child", str(devices), "--width", str(args.width), "--layers", str(args.layers)]
    cmd += ["--population", str(args.population), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{devices}-device run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        f"# Scaling ({res['machine']})",
        "",
        f"{a['layers']} x {a['width']}x{a['width']} tanh MLP (+ biases), population {a['population']}, 4 input rows "
        "per member, Adam. Fake CPU devices share the same cores, so the numbers show the overhead of the sharded "
        "program (1.00 = free), not a speed-up: every fake device runs the replicated tell on the same cores "
        "(D times the update work) and its own thread of small ops. Reproduce: `python benchmarks/scaling.py"
        + (" --quick`" if res["quick"] else "`")
        + ".",
        "",
        "| devices | EGGROLL gen/s | EGGROLL evals/s | sharded / no-mesh time | OpenES gen/s | OpenES evals/s "
        "| sharded / no-mesh time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["throughput"]:
        e, o = r["eggroll"], r["open_es"]
        lines.append(
            f"| {r['devices']} | {e['generations_per_s']:.2f} | {e['evaluations_per_s']:.0f} | "
            f"{e['sharded_over_no_mesh_time']:.2f} | {o['generations_per_s']:.2f} | {o['evaluations_per_s']:.0f} | "
            f"{o['sharded_over_no_mesh_time']:.2f} |"
        )
    d = res["bytes"][0]["devices"]
    lines += [
        "",
        f"## Bytes exchanged per generation ({d} devices, per device, from the compiled program's collectives)",
        "",
        "| params | population | EGGROLL | OpenES | data-parallel gradient all-reduce (for comparison) |",
        "|---|---|---|---|---|",
    ]
    for r in res["bytes"]:
        lines.append(
            f"| {r['params']:,} | {r['population']} | {r['eggroll_bytes']:,} B | {r['open_es_bytes']:,} B | "
            f"{r['gradient_allreduce_bytes']:,} B |"
        )
    r = res["bytes"][-1]
    lines += [
        "",
        f"Collectives of the sharded generation: EGGROLL {r['eggroll_collectives']}, OpenES {r['open_es_collectives']}"
        " (the all-gather of the N fitness values, independent of the parameter count).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--population", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.width, args.layers, args.population, args.repeats)))
        return
    if args.quick:
        args.width, args.population, args.repeats = 64, 64, 3

    throughput = []
    for d in args.devices:
        r = _run_child(d, args)
        throughput.append(r)
        e, o = r["eggroll"], r["open_es"]
        print(
            f"{d} device(s): EGGROLL {e['generations_per_s']:.2f} gen/s ({e['sharded_over_no_mesh_time']:.2f}x "
            f"no-mesh time), OpenES {o['generations_per_s']:.2f} gen/s ({o['sharded_over_no_mesh_time']:.2f}x)",
            flush=True,
        )

    # Bytes vs parameters: compile (not run) the 8-device program for growing widths, in this process.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    widths = [16, 64, 256] if args.quick else [64, 256, 1024]
    rows = []
    for w in widths:
        row = comm_bytes(w, args.layers, 64 if args.quick else args.population, 8)
        rows.append(row)
        print(
            f"params {row['params']:>9,}: EGGROLL {row['eggroll_bytes']:,} B, OpenES {row['open_es_bytes']:,} B, "
            f"gradient all-reduce {row['gradient_allreduce_bytes']:,} B",
            flush=True,
        )

    import jax

    res = {
        "machine": f"{jax.devices()[0].platform}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "jax": jax.__version__,
        "quick": args.quick,
        "args": {"width": args.width, "layers": args.layers, "population": args.population, "repeats": args.repeats},
        "throughput": throughput,
        "bytes": rows,
    }
    os.makedirs(RESULTS, exist_ok=True)
    stem = "scaling_quick" if args.quick else "scaling"
    with open(os.path.join(RESULTS, f"{stem}.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(RESULTS, f"{stem}.md"), "w") as f:
        f.write(_markdown(res))
    print(f"wrote {RESULTS}/{stem}.json and .md")


if __name__ == "__main__":
    main()
