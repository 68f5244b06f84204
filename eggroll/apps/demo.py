"""The demonstration run by ``eggroll demo``: EGGROLL trains a Flax MLP, no downloads.

A 2 x 64 tanh MLP learns a 1-D curve (``sin(3x) + 0.3 x^2`` on [-2, 2]) from
mean squared error alone, with low-rank perturbations (rank 1) evaluated
through :func:`eggroll.apply_flax` (no per-member weight matrix is formed).
For comparison the same budget is spent by full-rank OpenAI-ES. Generations run
in jitted chunks of ``lax.scan``, each a step of the one run loop
(:class:`DemoTask`); the progress display reports the loss. A plot of both
learning curves and of the fitted curve is saved. The strategies advance together (a loop
step runs one chunk of each), so a run stopped early, by ``--time-budget`` or a signal, has
given both the same number of generations. (``eggroll.demo`` is the old
name of this module.)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import eggroll
from eggroll.run.loop import RunInterrupted, RunOptions, Task
from eggroll.run.loop import run as loop_run
from eggroll.run.progress import console


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


class DemoTask(Task):
    """The demo as a :class:`eggroll.run.loop.Task`: EGGROLL and OpenAI-ES side by side, in chunks of generations.

    One loop step runs one jitted chunk (``lax.scan`` over ``cfg.chunk``
    generations) of each strategy, so both have had the same generations
    wherever the run stops; the loss curves are kept with the checkpoint, so a
    resumed demo draws the same curves.
    """

    name = "demo"
    unit = "chunk"
    label = "evolving"
    columns = ("generation", "eggroll_mse", "open_es_mse", "eggroll_seconds", "open_es_seconds", "seconds")
    columns += ("generations_per_s", "evaluations_per_s")
    may_change = "--checkpoint-every, --time-budget and --quiet"

    def __init__(self, cfg: DemoConfig):
        if cfg.generations < 1 or cfg.population_size < 2 or cfg.rank < 1 or cfg.chunk < 1:
            raise ValueError(
                f"--generations, --rank must be >= 1 and --population >= 2, got {cfg.generations}, {cfg.rank}, "
                f"{cfg.population_size}"
            )
        self.cfg = cfg
        self.population_size = cfg.population_size * cfg.chunk * 2  # members evaluated per step: both strategies
        self.x = jnp.linspace(-2, 2, 128)[:, None]
        self.y = target(self.x)
        self.model = MLP(width=cfg.width)
        self.variables = self.model.init(jax.random.key(cfg.seed), self.x)
        opt = optax.adam(cfg.learning_rate)
        self.strategies = {
            f"EGGROLL (rank {cfg.rank})": eggroll.eggroll(
                population_size=cfg.population_size, solution=self.variables, rank=cfg.rank, optimizer=opt
            ),
            "OpenAI-ES": eggroll.open_es(population_size=cfg.population_size, solution=self.variables, optimizer=opt),
        }
        self.labels = list(self.strategies)
        self.keys_of = dict(zip(self.labels, ("eggroll", "open_es"), strict=True))  # metric-name prefixes
        self.chunks = -(-cfg.generations // cfg.chunk)
        self.curves: dict[str, list[float]] = {label: [] for label in self.labels}
        self._chunk = {label: _chunk_fn(es, self.model, self.x, self.y, cfg) for label, es in self.strategies.items()}
        self.keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.generations)

    @property
    def total(self) -> int:
        """Loop steps: chunks (each runs every strategy)."""
        return self.chunks

    def settings(self) -> dict[str, Any]:
        # "steps": refuses, by name, checkpoints of demos that ran the strategies one after the other
        return {**asdict(self.cfg), "steps": "a chunk of every strategy"}

    def init(self) -> dict[str, Any]:
        cfg = self.cfg
        console.print(
            f"[bold]eggroll demo[/]: a {sum(v.size for v in jax.tree.leaves(self.variables))}-parameter MLP fits a "
            f"curve by evolution (population {cfg.population_size}, rank {cfg.rank}, {cfg.generations} generations)"
        )
        return {
            label: es.init(jax.random.key(self.cfg.seed), self.variables, _params(es, self.cfg))
            for label, es in self.strategies.items()
        }

    def step(self, carry, generation):
        start = (generation - 1) * self.cfg.chunk
        row: dict[str, Any] = {}
        for label in self.labels:
            t0 = time.perf_counter()
            state, losses = self._chunk[label](carry[label], self.keys[start : start + self.cfg.chunk])
            self.curves[label] = self.curves[label][:start] + [float(v) for v in losses]
            carry = {**carry, label: state}
            row[f"{self.keys_of[label]}_mse"] = self.curves[label][-1]
            row[f"{self.keys_of[label]}_seconds"] = time.perf_counter() - t0
        return carry, row

    def describe(self, row) -> str:
        return "  ".join(f"{label.split()[0]} mse {row[f'{key}_mse']:.4f}" for label, key in self.keys_of.items())

    def save_extra(self) -> dict[str, Any]:
        return {"curves": self.curves}

    def load_extra(self, extra) -> None:
        self.curves = {label: list(extra["curves"][label]) for label in self.labels}

    def finish(self, carry, result) -> dict[str, Any]:
        if result.interrupted:  # the demo's files describe finished runs only
            return {}
        out = Path(result.out)
        x, y, model = self.x, self.y, self.model
        fits = {label: model.apply(self.strategies[label].get_mean(carry[label]), x) for label in self.labels}
        seconds = {
            label: sum(row.get(f"{key}_seconds") or 0.0 for row in result.history)
            for label, key in self.keys_of.items()
        }
        start_loss = float(jnp.mean((model.apply(self.variables, x) - y) ** 2))
        summary = {
            "config": asdict(self.cfg),
            "parameters": int(sum(v.size for v in jax.tree.leaves(self.variables))),
            "initial_mse": start_loss,
            "final_mse": {k: v[-1] for k, v in self.curves.items()},
            "curves": self.curves,
            "seconds": seconds,
        }
        for label in self.labels:
            console.print(
                f"  {label:<18} mse {start_loss:.4f} -> {self.curves[label][-1]:.5f}  ({seconds[label]:.1f} s)"
            )
        plot(out, x, y, self.curves, fits)
        (out / "demo.json").write_text(json.dumps(summary, indent=2))
        files = {"plot": str(out / "demo.png"), "summary": str(out / "demo.json")}
        self.summary = summary
        return {"final_mse": summary["final_mse"], "initial_mse": start_loss, "files": files}


def _params(es: eggroll.Strategy, cfg: DemoConfig) -> Any:
    return es.default_params.replace(sigma_init=cfg.sigma)


def _chunk_fn(es: eggroll.Strategy, model: MLP, x: jax.Array, y: jax.Array, cfg: DemoConfig):
    loss = lambda v: jnp.mean((eggroll.apply_flax(model, v, x) - y) ** 2)
    params = _params(es, cfg)

    @jax.jit
    def chunk(state, keys):
        def step(state, key):
            pop, state = es.ask(key, state, params)
            state, _ = es.tell(key, pop, eggroll.evaluate(loss, pop), state, params)
            return state, loss(es.get_mean(state))

        return jax.lax.scan(step, state, keys)

    return chunk


class DemoInterrupted(RunInterrupted):
    """SIGTERM / Ctrl-C stopped the demo (after a checkpoint when it checkpoints); ``signal`` names it, ``step``
    is the last finished loop step."""


def run(
    out_dir: str = "runs/demo",
    cfg: DemoConfig | None = None,
    *,
    checkpoint_every: int | None = None,
    resume: bool = False,
    time_budget: float | None = None,
    quiet: bool = False,
) -> dict:
    """Train with EGGROLL and OpenAI-ES through the one run loop; save ``demo.png`` and ``demo.json`` in ``out_dir``.

    With ``checkpoint_every`` (in chunks of ``cfg.chunk`` generations) or ``resume`` the run saves
    ``out_dir/checkpoints`` on that schedule, at the end and on SIGTERM / Ctrl-C; ``resume=True``
    continues from the newest checkpoint with the same curves as an uninterrupted run. Without
    them the demo keeps no checkpoints (a short job that people rerun into the same folder).

    Raises:
        ValueError: ``resume`` without checkpoints, a fresh run into a folder that holds them,
            or a resume with other settings.
        DemoInterrupted: SIGTERM / Ctrl-C arrived.
    """
    task = DemoTask(cfg or DemoConfig())
    options = RunOptions(
        out=out_dir,
        generations=None,
        checkpoint_every=checkpoint_every,
        resume=resume,
        time_budget=time_budget,
        quiet=quiet,
        checkpoints=checkpoint_every is not None or resume,
    )
    result = loop_run(task, options)
    if result.interrupted:
        raise DemoInterrupted(result, signal=result.stopped_by, step=result.generation)
    return getattr(task, "summary", None)


def plot(out_dir, x, y, curves, fits) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
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
    fig.savefig(Path(out_dir, "demo.png"), dpi=110)
