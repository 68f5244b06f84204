"""The demonstration run by ``eggroll demo``: EGGROLL trains a Flax MLP, no downloads.

A 2 x 64 tanh MLP learns a 1-D curve (``sin(3x) + 0.3 x^2`` on [-2, 2]) from
mean squared error alone, with low-rank perturbations (rank 1) evaluated
through :func:`eggroll.apply_flax` (no per-member weight matrix is formed).
For comparison the same budget is spent by full-rank OpenAI-ES. Generations run
in jitted chunks of ``lax.scan``; the progress bar reports the loss. A plot of
both learning curves and of the fitted curve is saved.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import eggroll
from eggroll.progress import console, generation_progress


class MLP(nn.Module):
    """A small tanh MLP with a scalar output."""

    width: int = 64
    depth: int = 2

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = nn.tanh(nn.Dense(self.width)(x))
        return nn.Dense(1)(x)


@dataclass
class DemoConfig:
    generations: int = 400
    population_size: int = 512
    rank: int = 1
    sigma: float = 0.05
    learning_rate: float = 0.02
    width: int = 64
    seed: int = 0
    chunk: int = 20


def target(x: jax.Array) -> jax.Array:
    return jnp.sin(3 * x) + 0.3 * x**2


def train(es: eggroll.Strategy, model: MLP, variables, x, y, cfg: DemoConfig, label: str, update=None):
    """Run ``cfg.generations`` of ``es``; returns final variables and the loss curve."""
    loss = lambda v: jnp.mean((eggroll.apply_flax(model, v, x) - y) ** 2)
    params = es.default_params.replace(sigma_init=cfg.sigma)
    state = es.init(jax.random.key(cfg.seed), variables, params)

    @jax.jit
    def chunk(state, keys):
        def step(state, key):
            pop, state = es.ask(key, state, params)
            state, metrics = es.tell(key, pop, eggroll.evaluate(loss, pop), state, params)
            return state, loss(es.get_mean(state))

        return jax.lax.scan(step, state, keys)

    curve = []
    keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.generations)
    for start in range(0, cfg.generations, cfg.chunk):
        state, losses = chunk(state, keys[start : start + cfg.chunk])
        curve.extend(float(v) for v in losses)
        if update is not None:
            update(len(losses), f"{label}: mse {curve[-1]:.4f}")
    return es.get_mean(state), curve


def run(out_dir: str = "runs/demo", cfg: DemoConfig | None = None) -> dict:
    """Train with EGGROLL and OpenAI-ES, save ``demo.png`` and ``demo.json`` in ``out_dir``."""
    cfg = cfg or DemoConfig()
    os.makedirs(out_dir, exist_ok=True)
    x = jnp.linspace(-2, 2, 128)[:, None]
    y = target(x)
    model = MLP(width=cfg.width)
    variables = model.init(jax.random.key(cfg.seed), x)
    n_params = sum(v.size for v in jax.tree.leaves(variables))
    console.print(
        f"[bold]eggroll demo[/]: a {n_params}-parameter MLP fits a curve by evolution "
        f"(population {cfg.population_size}, rank {cfg.rank}, {cfg.generations} generations)"
    )
    opt = optax.adam(cfg.learning_rate)
    strategies = {
        f"EGGROLL (rank {cfg.rank})": eggroll.eggroll(
            population_size=cfg.population_size, solution=variables, rank=cfg.rank, optimizer=opt
        ),
        "OpenAI-ES": eggroll.open_es(population_size=cfg.population_size, solution=variables, optimizer=opt),
    }
    curves, fits, times = {}, {}, {}
    with generation_progress(cfg.generations * len(strategies), "evolving") as update:
        for label, es in strategies.items():
            t = time.perf_counter()
            final, curve = train(es, model, variables, x, y, cfg, label, update)
            times[label] = time.perf_counter() - t
            curves[label], fits[label] = curve, model.apply(final, x)
    start_loss = float(jnp.mean((model.apply(variables, x) - y) ** 2))
    summary = {
        "config": asdict(cfg),
        "parameters": int(n_params),
        "initial_mse": start_loss,
        "final_mse": {k: v[-1] for k, v in curves.items()},
        "seconds": times,
    }
    for label in curves:
        console.print(f"  {label:<18} mse {start_loss:.4f} -> {curves[label][-1]:.5f}  ({times[label]:.1f} s)")
    plot(out_dir, x, y, curves, fits)
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump(summary, f, indent=2)
    console.print(f"saved {os.path.join(out_dir, 'demo.png')} and demo.json")
    return summary


def plot(out_dir, x, y, curves, fits) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, curve in curves.items():
        ax1.semilogy(curve, label=label)
    ax1.set(xlabel="generation", ylabel="MSE of the mean", title="learning curves")
    ax1.legend()
    ax2.plot(x[:, 0], y[:, 0], "k", lw=3, alpha=0.3, label="target")
    for label, fit in fits.items():
        ax2.plot(x[:, 0], fit[:, 0], label=label)
    ax2.set(xlabel="x", title="fitted curve")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "demo.png"), dpi=110)
    plt.close(fig)
