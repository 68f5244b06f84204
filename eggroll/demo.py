"""The demonstration run by ``eggroll demo``: EGGROLL trains a Flax MLP, no downloads.

A 2 x 64 tanh MLP learns a 1-D curve (``sin(3x) + 0.3 x^2`` on [-2, 2]) from
mean squared error alone, with low-rank perturbations (rank 1) evaluated
through :func:`eggroll.apply_flax` (no per-member weight matrix is formed).
For comparison the same budget is spent by full-rank OpenAI-ES. Generations run
in jitted chunks of ``lax.scan``; the progress bar reports the loss. A plot of
both learning curves and of the fitted curve is saved.
"""

from __future__ import annotations

import contextlib
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


def train(
    es: eggroll.Strategy,
    model: MLP,
    variables,
    x,
    y,
    cfg: DemoConfig,
    label: str,
    update=None,
    *,
    state=None,
    curve=None,
    on_chunk=None,
    stop=None,
):
    """Run ``cfg.generations`` of ``es``; returns final variables and the loss curve.

    ``state`` / ``curve`` continue a run from a checkpoint (``len(curve)`` generations done);
    ``on_chunk(state, curve)`` is called after every chunk (to checkpoint); ``stop()`` returning
    true ends the run after the current chunk (then ``len(curve) < cfg.generations``).
    """
    loss = lambda v: jnp.mean((eggroll.apply_flax(model, v, x) - y) ** 2)
    params = es.default_params.replace(sigma_init=cfg.sigma)
    state = es.init(jax.random.key(cfg.seed), variables, params) if state is None else state

    @jax.jit
    def chunk(state, keys):
        def step(state, key):
            pop, state = es.ask(key, state, params)
            state, metrics = es.tell(key, pop, eggroll.evaluate(loss, pop), state, params)
            return state, loss(es.get_mean(state))

        return jax.lax.scan(step, state, keys)

    curve = list(curve or [])
    keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.generations)
    for start in range(len(curve), cfg.generations, cfg.chunk):
        state, losses = chunk(state, keys[start : start + cfg.chunk])
        curve.extend(float(v) for v in losses)
        if update is not None:
            update(len(losses), f"{label}: mse {curve[-1]:.4f}")
        if on_chunk is not None:
            on_chunk(state, curve)
        if stop is not None and stop() and len(curve) < cfg.generations:
            break
    return es.get_mean(state), curve, state


class DemoInterrupted(Exception):
    """SIGTERM / Ctrl-C stopped the demo after a checkpoint; ``signal`` names it."""

    def __init__(self, signal: str, step: int):
        super().__init__(f"stopped by {signal} at step {step}")
        self.signal, self.step = signal, step


def run(
    out_dir: str = "runs/demo",
    cfg: DemoConfig | None = None,
    *,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> dict:
    """Train with EGGROLL and OpenAI-ES, save ``demo.png`` and ``demo.json`` in ``out_dir``.

    With ``checkpoint_every`` (in chunks of ``cfg.chunk`` generations) the run saves
    ``out_dir/checkpoints`` (:class:`eggroll.checkpoint.Checkpointer`) on that schedule, at the
    end and on SIGTERM / Ctrl-C (then :class:`DemoInterrupted` is raised); ``resume=True``
    continues from the newest checkpoint with the same curves as an uninterrupted run.

    Raises:
        ValueError: ``resume`` without checkpoints, a fresh run into a folder that holds them,
            or a resume with other settings.
        DemoInterrupted: SIGTERM / Ctrl-C arrived (a checkpoint was saved).
    """
    from eggroll.checkpoint import Checkpointer, GracefulInterrupt

    cfg = cfg or DemoConfig()
    os.makedirs(out_dir, exist_ok=True)
    x = jnp.linspace(-2, 2, 128)[:, None]
    y = target(x)
    model = MLP(width=cfg.width)
    variables = model.init(jax.random.key(cfg.seed), x)
    n_params = sum(v.size for v in jax.tree.leaves(variables))
    opt = optax.adam(cfg.learning_rate)
    strategies = {
        f"EGGROLL (rank {cfg.rank})": eggroll.eggroll(
            population_size=cfg.population_size, solution=variables, rank=cfg.rank, optimizer=opt
        ),
        "OpenAI-ES": eggroll.open_es(population_size=cfg.population_size, solution=variables, optimizer=opt),
    }
    labels = list(strategies)
    curves, fits, times, finals = {}, {}, {}, []
    current: tuple[int, object, list[float]] = (0, None, [])
    ckpt = None
    if checkpoint_every is not None or resume:
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be >= 1 chunk, got {checkpoint_every}")
        ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), every=checkpoint_every, max_to_keep=2)
        ckpt.refuse_fresh_run(resume, "a demo run")
        if resume:
            meta = ckpt.read_meta()
            ckpt.check_settings(meta.get("config"), asdict(cfg))
            index = int(meta["strategy"])
            es = strategies[labels[min(index, len(labels) - 1)]]
            template = {
                "finals": [variables] * index,
                "state": es.init(jax.random.key(cfg.seed), variables, es.default_params) if index < len(labels) else 0,
            }
            items, _ = ckpt.restore(template)
            finals = list(items["finals"])
            for label, final in zip(labels, finals, strict=False):
                curves[label], fits[label], times[label] = meta["curves"][label], model.apply(final, x), 0.0
            current = (index, items["state"] if index < len(labels) else None, meta.get("curve", []))
            console.print(f"resumed from step {ckpt.latest_step()} ({ckpt.directory})")

    def save(index: int, state, curve) -> None:
        step = index * cfg.generations + len(curve)
        meta = {"config": asdict(cfg), "strategy": index, "curve": curve, "curves": dict(curves)}
        ckpt.save(step, {"finals": finals, "state": state if state is not None else 0}, meta)

    console.print(
        f"[bold]eggroll demo[/]: a {n_params}-parameter MLP fits a curve by evolution "
        f"(population {cfg.population_size}, rank {cfg.rank}, {cfg.generations} generations)"
    )
    done = current[0] * cfg.generations + len(current[2])
    signals = GracefulInterrupt() if ckpt is not None else contextlib.nullcontext(GracefulInterrupt(()))
    with generation_progress(cfg.generations * len(strategies), "evolving") as update, signals as sig:
        update(done, "resumed" if done else "")
        for index in range(current[0], len(labels)):
            label, es = labels[index], strategies[labels[index]]
            state, curve = (current[1], current[2]) if index == current[0] else (None, [])
            chunks = [len(curve) // cfg.chunk]

            def on_chunk(state, curve, index=index, chunks=chunks):
                chunks[0] += 1
                if ckpt is not None and (ckpt.should_save(chunks[0]) or sig.requested is not None):
                    save(index, state, curve)

            t = time.perf_counter()
            final, curve, state = train(
                es, model, variables, x, y, cfg, label, update, state=state, curve=curve, on_chunk=on_chunk,
                stop=lambda: sig.requested is not None,
            )  # fmt: skip
            times[label] = time.perf_counter() - t
            if len(curve) < cfg.generations:  # stopped by a signal after a checkpoint
                ckpt.close()
                raise DemoInterrupted(sig.signal_name, index * cfg.generations + len(curve))
            curves[label], fits[label] = curve, model.apply(final, x)
            finals.append(final)
    if ckpt is not None:
        save(len(labels), None, [])
        ckpt.close()
    start_loss = float(jnp.mean((model.apply(variables, x) - y) ** 2))
    summary = {
        "config": asdict(cfg),
        "parameters": int(n_params),
        "initial_mse": start_loss,
        "final_mse": {k: v[-1] for k, v in curves.items()},
        "curves": curves,
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
