"""Brax throughput and return in a fixed wall-clock budget (meant for a GPU; runs on CPU too).

For each environment (default: ant and humanoid) an EGGROLL run of ``eggroll rl``'s
training loop is given a wall-clock budget (start-up and compilation count against it);
recorded are environment steps per second over the generations after the first (steps
inside running episodes, from the fitness state's counter) and the best evaluated return
of the mean policy. A budget that leaves no generation after the first reports NaN for
the speed and the first generation's time, with a warning.

Run: ``python benchmarks/rl_brax_throughput.py`` (GPU sizes: population 2048,
horizon 1000, 300 s); ``--cpu`` for small sizes that finish on a CPU.
Writes ``benchmarks/results/rl_brax_throughput.json`` (``--cpu``: ``rl_brax_throughput_cpu.json``;
``--out DIR`` for another folder).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import jax

warnings.filterwarnings("ignore")

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    from eggroll.apps.rl import RLConfig, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="ant,humanoid")
    ap.add_argument("--cpu", action="store_true", help="small sizes: population 64, horizon 100, 120 s")
    ap.add_argument("--population", type=int, default=None)
    ap.add_argument("--horizon", type=int, default=None)
    ap.add_argument("--budget", type=float, default=None, help="seconds per environment")
    ap.add_argument("--backend", default="spring")
    ap.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = ap.parse_args()
    pop = args.population or (64 if args.cpu else 2048)
    horizon = args.horizon or (100 if args.cpu else 1000)
    budget = args.budget or (120.0 if args.cpu else 300.0)
    rows = {}
    for env in args.envs.split(","):
        config = RLConfig(
            env=env,
            strategy="eggroll",
            population_size=pop,
            horizon=horizon,
            num_rollouts=1,
            hidden=(256, 256, 256),
            sigma=0.05,
            learning_rate=0.01,
            generations=100_000,
            eval_every=10,
            eval_episodes=8,
            backend=args.backend,
            time_budget_s=budget,
        )
        result = train(config, progress=True)
        h = result.history
        timed = len(h["generation"]) > 1  # the first generation is not timed (warm-up)
        if not timed:
            print(
                f"warning: {env}: the {budget:g} s budget ended after one generation, none timed; raise --budget "
                "(start-up and compilation count against it)"
            )
        seconds = sum(h["seconds"][1:])
        steps = h["env_steps"][-1] - h["env_steps"][0]
        rows[env] = {
            "population": pop,
            "horizon": horizon,
            "backend": args.backend,
            "generations": len(h["generation"]),
            "compile_s": result.compile_seconds,
            "env_steps_per_s": steps / max(seconds, 1e-9) if timed else math.nan,
            "best_eval_return": result.best_eval_return,
            "initial_eval_return": h["eval_return"][0],
            "budget_s": budget,
        }
        print(env, rows[env])
    report = {"device": str(jax.devices()[0]), "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("rl_brax_throughput_cpu.json" if args.cpu else "rl_brax_throughput.json")
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
