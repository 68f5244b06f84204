"""Replay a policy for one episode and write it to a file (never a window).

* gymnax CartPole-v1 and Pendulum-v1: an animated GIF drawn with matplotlib
  (gymnax's own classic-control renderer needs gymnasium + pygame, which are not
  dependencies of eggroll);
* other gymnax environments with a gymnax visualiser (MinAtar, Catch, mazes,
  PointRobot): an animated GIF through ``gymnax.visualize.Visualizer``;
* Brax environments: an HTML page from ``brax.io.html.render`` (its viewer
  script is loaded from a CDN when the page is opened).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.rl import normalize as norm
from eggroll.problems.rl.envs import Env
from eggroll.problems.rl.fitness import apply_policy


class Episode(NamedTuple):
    """One played episode.

    Attributes:
        states: environment states, one per step until the end (a list).
        rewards: reward of each step, ``float32[length]``.
        total: the return.
    """

    states: list[Any]
    rewards: np.ndarray
    total: float


def play_episode(
    env: Env,
    policy: Any,
    params: Any,
    obs_stats: norm.RunningStats | None,
    key: jax.Array,
    horizon: int | None = None,
    obs_clip: float = 10.0,
) -> Episode:
    """Run one deterministic episode and keep every state.

    Args:
        env: the environment.
        policy: the Flax policy module.
        params: its variables.
        obs_stats: observation statistics the policy was trained with (``None``: raw observations).
        key: episode seed.
        horizon: maximum steps (default: the environment's episode length).
        obs_clip: clip of normalised observations (as in training).

    Returns:
        the :class:`Episode` (states include the initial one).
    """
    horizon = env.max_steps if horizon is None else int(horizon)

    @jax.jit
    def run(key):
        obs, state = env.reset(jax.random.fold_in(key, 0))

        def step(carry, t):
            obs, state = carry
            x = norm.normalize(obs_stats, obs, obs_clip) if obs_stats is not None else obs
            action = apply_policy(policy, params, x, None)
            obs, nstate, reward, done = env.step(jax.random.fold_in(key, t + 1), state, action)
            return (obs, nstate), (nstate, reward, done)

        _, (states, rewards, dones) = jax.lax.scan(step, (obs, state), jnp.arange(horizon))
        return state, states, rewards, dones

    first, states, rewards, dones = run(key)
    dones = np.asarray(dones)
    length = int(np.argmax(dones)) + 1 if dones.any() else horizon
    rewards = np.asarray(rewards[:length], np.float32)
    first, states = jax.tree.map(np.asarray, (first, states))
    seq = [first] + [jax.tree.map(lambda x, i=i: x[i], states) for i in range(length)]
    return Episode(seq, rewards, float(rewards.sum()))


def render_episode(env: Env, episode: Episode, path: str | Path) -> Path:
    """Write ``episode`` to ``path``: a GIF for gymnax, an HTML page for Brax.

    The suffix is set by this function (``.gif`` or ``.html``); the written path is returned.

    Raises:
        ValueError: when the environment has no renderer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if env.library == "brax":
        from brax.io import html

        out = path.with_suffix(".html")
        sys = env.raw.sys
        out.write_text(html.render(sys, [s.pipeline_state for s in episode.states]))
        return out
    out = path.with_suffix(".gif")
    if env.name in _DRAW:
        _draw_gif(env, episode, out)
        return out
    gym_env, params = env.raw
    try:
        from gymnax.visualize import Visualizer

        Visualizer(gym_env, params, episode.states[:-1], np.cumsum(episode.rewards)).animate(str(out))
    except Exception as err:  # noqa: BLE001 - gymnax's visualiser raises many kinds
        raise ValueError(
            f"{env.name} cannot be rendered here ({type(err).__name__}: {err}); "
            f"eggroll draws {sorted(_DRAW)} itself and uses gymnax's visualiser for MinAtar, Catch and mazes"
        ) from err
    return out


def _cartpole(ax, state, params):
    from matplotlib.patches import Rectangle

    x, theta = float(state.x), float(state.theta)
    limit = float(params.x_threshold)
    ax.set_xlim(-limit * 1.1, limit * 1.1)
    ax.set_ylim(-0.5, 2.0)
    ax.plot([-limit, limit], [0, 0], color="0.4", lw=1)
    ax.add_patch(Rectangle((x - 0.25, -0.12), 0.5, 0.24, color="0.2"))
    length = 2.0 * float(params.length)
    ax.plot([x, x + length * np.sin(theta)], [0, length * np.cos(theta)], color="tab:orange", lw=6)


def _pendulum(ax, state, params):
    theta = float(state.theta)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.plot([0, np.sin(theta)], [0, np.cos(theta)], color="tab:red", lw=8)
    ax.plot([0], [0], "ko")


_DRAW = {"CartPole-v1": _cartpole, "Pendulum-v1": _pendulum}


def _draw_gif(env: Env, episode: Episode, path: Path, fps: int = 30, max_frames: int = 150) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import animation

    draw = _DRAW[env.name]
    _, params = env.raw
    fig, ax = plt.subplots(figsize=(4, 3.2))
    cumulative = np.concatenate([[0.0], np.cumsum(episode.rewards)])

    def frame(i):
        ax.clear()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        draw(ax, episode.states[i], params)
        ax.set_title(f"{env.name}  step {i}  return {cumulative[i]:.1f}", fontsize=9)

    stride = max(1, -(-len(episode.states) // max_frames))
    frames = list(range(0, len(episode.states), stride))
    anim = animation.FuncAnimation(fig, frame, frames=frames, interval=1000 * stride // fps)
    try:
        anim.save(str(path), writer=animation.PillowWriter(fps=fps))
    finally:
        plt.close(fig)
