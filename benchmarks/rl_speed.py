"""RL benchmark: eggroll's gymnax / Brax fitness vs evosax's problems, and the CartPole anchor.

Three measurements, all in one run (ratios are only meaningful within a run):

1. Evaluation speed on the same policy and the same population: eggroll's
   ``rl_fitness`` vs evosax's ``GymnaxProblem`` (CartPole-v1, population 256 x
   4 episodes x 500 steps, categorical MLP 32-32) and ``BraxProblem`` (hopper,
   spring backend, population 64 x 1 episode x 100 steps, tanh MLP 32-32).
2. The anchor: evosax ``Open_ES`` (adam 0.05, sigma 0.05, population 256,
   4 episodes of 500 steps, MLP 32-32) against eggroll's EGGROLL and OpenAI-ES
   with the defaults of ``eggroll rl`` (the same numbers): generations until the
   population's mean return reaches 475, and milliseconds per generation. eggroll's
   episodes end early once all have ended (``early_exit``, its default); evosax's
   always run the 500 steps.
3. EGGROLL vs OpenAI-ES generation time on a 3 x 256 MLP policy (CartPole,
   fixed 500-step horizon, population 256 x 4 episodes).

Run: ``python benchmarks/rl_speed.py`` (``--quick`` for one seed and fewer repeats).
Writes ``benchmarks/results/rl_speed.json`` and ``rl_speed.md`` (``--quick``: ``rl_speed_quick.*``;
``--out DIR`` for another folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

warnings.filterwarnings("ignore")

RESULTS = Path(__file__).parent / "results"


def timed(fn, *args, repeats: int = 5) -> tuple[float, float]:
    """(first call seconds incl. compile, min seconds of ``repeats`` later calls)."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return first, best


def interleaved(fns: dict, args: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Compile each, then time them alternately (min over rounds), so load affects all alike."""
    out = {}
    for name, fn in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(*args[name]))
        out[name] = {"compile_s": time.perf_counter() - t, "run_ms": float("inf")}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            out[name]["run_ms"] = min(out[name]["run_ms"], 1000 * (time.perf_counter() - t))
    return out


# ------------------------------------------------------------------------------ 1. evaluation


def evaluation_speed(repeats: int, only_gymnax: bool = False) -> dict:
    from evosax.problems import BraxProblem, GymnaxProblem

    import eggroll
    from eggroll.models.mlp import MLPPolicy
    from eggroll.problems.rl import make_env, rl_fitness

    rows = {}
    # gymnax CartPole: same categorical policy module and the same stacked population
    policy = MLPPolicy(action_dim=2, hidden=(32, 32), head="categorical")
    ours = rl_fitness("CartPole-v1", policy, stochastic=True, num_rollouts=4, horizon=500)
    ours_early = rl_fitness(ours.env, policy, stochastic=True, num_rollouts=4, horizon=500, early_exit=True)
    theirs = GymnaxProblem("CartPole-v1", policy, episode_length=500, num_rollouts=4)
    params = ours.init_params(jax.random.key(0))
    es = eggroll.open_es(256, params, sigma_init=0.05)
    pop, _ = es.ask(jax.random.key(1), es.init(jax.random.key(2), params, es.default_params), es.default_params)
    key = jax.random.key(3)
    fns = {
        "eggroll (scan)": jax.jit(lambda k, p, s: ours.evaluate(k, p, s)[0]),
        "eggroll (early exit)": jax.jit(lambda k, p, s: ours_early.evaluate(k, p, s)[0]),
        "evosax GymnaxProblem": jax.jit(lambda k, p, s: theirs.eval(k, p, s)[0]),
    }
    args = {
        "eggroll (scan)": (key, pop, ours.init(key)),
        "eggroll (early exit)": (key, pop, ours.init(key)),
        "evosax GymnaxProblem": (key, pop, theirs.init(key)),
    }
    rows["CartPole-v1 pop 256 x 4 x 500"] = interleaved(fns, args, repeats)
    if only_gymnax:
        return rows

    # Brax hopper (spring): same tanh policy, same population
    env = make_env("hopper", episode_length=100, backend="spring")
    policy = MLPPolicy(action_dim=env.action_size, hidden=(32, 32), head="tanh")
    ours = rl_fitness(env, policy, num_rollouts=1, horizon=100)
    theirs = BraxProblem("hopper", policy, episode_length=100, num_rollouts=1, env_kwargs={"backend": "spring"})
    params = ours.init_params(jax.random.key(0))
    es = eggroll.open_es(64, params, sigma_init=0.05)
    pop, _ = es.ask(jax.random.key(1), es.init(jax.random.key(2), params, es.default_params), es.default_params)
    fns = {
        "eggroll": jax.jit(lambda k, p, s: ours.evaluate(k, p, s)[0]),
        "evosax BraxProblem": jax.jit(lambda k, p, s: theirs.eval(k, p, s)[0]),
    }
    args = {"eggroll": (key, pop, ours.init(key)), "evosax BraxProblem": (key, pop, theirs.init(key))}
    rows["hopper (spring) pop 64 x 1 x 100"] = interleaved(fns, args, repeats)
    return rows


# ------------------------------------------------------------------------------ 2. anchor


def _evosax_generation(seed: int):
    from evosax.algorithms import Open_ES
    from evosax.problems import MLP, GymnaxProblem, categorical_output_fn

    policy = MLP(layer_sizes=(32, 32, 2), output_fn=categorical_output_fn)
    problem = GymnaxProblem("CartPole-v1", policy, episode_length=500, num_rollouts=4)
    key = jax.random.key(seed)
    solution = problem.sample(key)
    es = Open_ES(256, solution, optimizer=optax.adam(0.05), std_schedule=optax.constant_schedule(0.05))
    params = es.default_params
    state = es.init(key, solution, params)
    pstate = problem.init(key)

    @jax.jit
    def generation(key, state, pstate):
        k1, k2, k3 = jax.random.split(key, 3)
        pop, state = es.ask(k1, state, params)
        fitness, pstate, _ = problem.eval(k2, pop, pstate)
        state, _ = es.tell(k3, pop, -fitness, state, params)
        return state, pstate, jnp.mean(fitness)

    return generation, (state, pstate)


def _eggroll_generation(seed: int, strategy: str, hidden=(32, 32), early_exit=True):
    from eggroll.apps.rl import RLConfig, build

    config = RLConfig(strategy=strategy, hidden=hidden, seed=seed, early_exit=early_exit)
    fitness, _, es, params = build(config)
    p = es.default_params
    state = es.init(jax.random.key(seed), params, p)
    fstate = fitness.init(jax.random.key(seed))

    @jax.jit
    def generation(key, state, fstate):
        k1, k2, k3 = jax.random.split(key, 3)
        pop, state = es.ask(k1, state, p)
        fit, fstate = fitness.evaluate(k2, pop, fstate)
        state, _ = es.tell(k3, pop, fit, state, p)
        return state, fstate, jnp.mean(fit)

    return generation, (state, fstate)


def run_to_target(make, seed: int, max_generations: int, target: float = 475.0) -> dict:
    generation, (s1, s2) = make(seed)
    key = jax.random.key(seed + 17)
    # Two warm-up generations (results dropped) before the timed run from the same start: evosax's
    # initial state has weak-typed fields, so the generation compiles again on its own output.
    t = time.perf_counter()
    jax.block_until_ready(generation(key, *generation(key, s1, s2)[:2]))
    compile_s = time.perf_counter() - t
    means, times, reached = [], [], None
    for g in range(1, max_generations + 1):
        t = time.perf_counter()
        s1, s2, m = generation(jax.random.fold_in(key, g), s1, s2)
        m = float(m)
        times.append(time.perf_counter() - t)
        means.append(m)
        if reached is None and m >= target:
            reached = g
            break
    return {
        "generations_to_475": reached,
        "compile_s": compile_s,
        "ms_per_generation": 1000 * statistics.median(times),
        "mean_returns": [round(x, 1) for x in means],
    }


def anchor(seeds: list[int], max_generations: int) -> dict:
    makers = {
        "evosax Open_ES": _evosax_generation,
        "eggroll.eggroll (defaults)": lambda s: _eggroll_generation(s, "eggroll"),
        "eggroll.open_es (defaults)": lambda s: _eggroll_generation(s, "open_es"),
    }
    out = {}
    for name, make in makers.items():
        runs = [run_to_target(make, s, max_generations) for s in seeds]
        gens = [r["generations_to_475"] for r in runs]
        out[name] = {
            "generations_to_475": gens,
            "median_generations": statistics.median([g if g is not None else max_generations + 1 for g in gens]),
            "median_ms_per_generation": statistics.median(r["ms_per_generation"] for r in runs),
            "runs": runs,
        }
        print(f"  {name:28s} gens to 475: {gens}  ms/gen: {out[name]['median_ms_per_generation']:.1f}")
    return out


# ------------------------------------------------------------------------------ 3. 3 x 256 MLP


def big_policy(repeats: int) -> dict:
    fns, args = {}, {}
    for strategy in ("eggroll", "open_es"):
        generation, (s1, s2) = _eggroll_generation(0, strategy, hidden=(256, 256, 256), early_exit=False)
        fns[strategy] = generation
        args[strategy] = (jax.random.key(0), s1, s2)
    return interleaved(fns, args, min(repeats, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer repeats")
    ap.add_argument("--max-generations", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json in --out")
    args = ap.parse_args()
    path = args.out / ("rl_speed_quick.json" if args.quick else "rl_speed.json")
    if args.markdown_only:
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return
    repeats = 3 if args.quick else 7
    seeds = list(range(1 if args.quick else 3))  # always 0..n-1: markdown() names them from their count
    report = {
        "machine": f"{platform.machine()} {platform.processor()}, {jax.device_count()} JAX device(s), "
        f"jax {jax.__version__}",
        "note": "CPU shared with other jobs; every ratio compares numbers taken alternately in this one run",
    }
    print("1. evaluation speed (same policy, same population)")
    report["evaluation"] = evaluation_speed(repeats)
    for task, rows in report["evaluation"].items():
        base = next(v["run_ms"] for k, v in rows.items() if k.startswith("evosax"))
        for name, v in rows.items():
            v["speedup_vs_evosax"] = base / v["run_ms"]
            print(
                f"  {task:34s} {name:22s} {v['run_ms']:8.1f} ms  x{v['speedup_vs_evosax']:.2f}  "
                f"(compile {v['compile_s']:.1f} s)"
            )
    print("2. CartPole anchor (population mean return >= 475)")
    report["anchor"] = anchor(seeds, args.max_generations)
    print("3. EGGROLL vs OpenAI-ES, 3 x 256 MLP, CartPole 256 x 4 x 500 (fixed horizon)")
    big = big_policy(repeats)
    big["eggroll"]["speedup_vs_open_es"] = big["open_es"]["run_ms"] / big["eggroll"]["run_ms"]
    report["mlp_3x256"] = big
    for name, v in big.items():
        print(f"  {name:10s} {v['run_ms']:8.1f} ms/generation (compile {v['compile_s']:.1f} s)")
    print(f"  EGGROLL speed-up over OpenAI-ES: x{big['eggroll']['speedup_vs_open_es']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    path.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {path} and {path.with_suffix('.md').name}")


def markdown(r: dict) -> str:
    lines = ["# RL benchmark (benchmarks/rl_speed.py)", "", f"Machine: {r['machine']}. {r['note']}.", ""]
    lines += ["## Evaluation speed, same policy and population", "", "| task | evaluator | ms | speed-up vs evosax |"]
    lines += ["|---|---|---:|---:|"]
    for task, rows in r["evaluation"].items():
        for name, v in rows.items():
            lines.append(f"| {task} | {name} | {v['run_ms']:.1f} | x{v['speedup_vs_evosax']:.2f} |")
    seeds = range(len(next(iter(r["anchor"].values()))["generations_to_475"]))
    lines += ["", "## CartPole anchor: generations until the population mean return >= 475", ""]
    lines += [
        f"Seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}; at most the given number of generations. "
        "eggroll's episodes stop once all have ended (early exit, its default); evosax's always run 500 steps. "
        "The ms / generation of these runs were taken one run after another (not interleaved), on a CPU shared "
        "with other jobs, so they move with the load; the generation counts do not.",
        "",
    ]
    lines += ["| strategy | generations (per seed) | median ms / generation |", "|---|---|---:|"]
    for name, v in r["anchor"].items():
        ms = v["median_ms_per_generation"]
        lines.append(f"| {name} | {v['generations_to_475']} | {ms:.1f} |")
    lines += ["", "## 3 x 256 MLP policy, CartPole 256 x 4 x 500 (fixed horizon), one generation", ""]
    lines += ["| strategy | ms / generation |", "|---|---:|"]
    for name, v in r["mlp_3x256"].items():
        lines.append(f"| {name} | {v['run_ms']:.1f} |")
    lines.append(f"\nEGGROLL speed-up over OpenAI-ES: x{r['mlp_3x256']['eggroll']['speedup_vs_open_es']:.2f}\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
