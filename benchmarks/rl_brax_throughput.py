"""Brax throughput and return in a fixed wall-clock budget (meant for a GPU; runs on CPU too).

For each environment (default: ant and humanoid) an EGGROLL run of ``eggroll rl``'s
training loop is given a wall-clock budget (compilation not counted); recorded are
environment steps per second (steps inside running episodes, from the fitness
state's counter) and the best evaluated return of the mean policy.

Run: ``python benchmarks/rl_brax_throughput.py`` (GPU sizes: population 2048,
horizon 1000, 300 s); ``--cpu`` for small sizes that finish on a CPU.
Writes ``benchmarks/results/rl_brax_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
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
        seconds = sum(h["seconds"][1:])
        steps = h["env_steps"][-1] - h["env_steps"][0]
        rows[env] = {
            "population": pop,
            "horizon": horizon,
            "backend": args.backend,
            "generations": len(h["generation"]),
            "compile_s": result.compile_seconds,
            "env_steps_per_s": steps / max(seconds, 1e-9),
            "best_eval_return": result.best_eval_return,
            "initial_eval_return": h["eval_return"][0],
            "budget_s": budget,
        }
        print(env, rows[env])
    report = {"device": str(jax.devices()[0]), "results": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "rl_brax_throughput_cpu.json" if args.cpu else "rl_brax_throughput.json"
    (RESULTS / name).write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
