"""One small interface over gymnax and Brax environments.

:func:`make_env` returns an :class:`Env`: a NamedTuple of two pure functions
(``reset`` and ``step``) with the same signature for both libraries, plus the
facts a policy needs (observation size, action space). Observations are always
flat ``float32`` vectors; ``step`` returns a single ``done`` flag
(terminated or truncated), which covers both of gymnax's step conventions
(5 values in 0.x, 6 values with ``terminated`` and ``truncated`` in 1.x).

MuJoCo Playground / MJX environments are not supported: the package is not
installed in this project's environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Env(NamedTuple):
    """A JAX environment behind a uniform, pure interface.

    Attributes:
        name: the name it was made from (``"CartPole-v1"``, ``"hopper"`` ...).
        library: ``"gymnax"`` or ``"brax"``.
        obs_size: length of the flat observation vector.
        discrete: whether actions are integers in ``[0, action_size)``.
        action_size: number of discrete actions, or the dimension of a continuous action.
        action_low: lower bounds of a continuous action (``None`` when discrete).
        action_high: upper bounds of a continuous action (``None`` when discrete).
        max_steps: the environment's own episode length (the default horizon).
        reset: ``key -> (obs, env_state)``.
        step: ``(key, env_state, action) -> (obs, env_state, reward, done)``.
        raw: the underlying objects (gymnax ``(env, params)`` or the Brax env), for rendering.
    """

    name: str
    library: str
    obs_size: int
    discrete: bool
    action_size: int
    action_low: np.ndarray | None
    action_high: np.ndarray | None
    max_steps: int
    reset: Callable[[jax.Array], tuple[jax.Array, Any]]
    step: Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any, jax.Array, jax.Array]]
    raw: Any


def gymnax_names() -> list[str]:
    """Names of the registered gymnax environments."""
    import gymnax

    return list(gymnax.registered_envs)


def _brax_envs() -> Any:
    """``brax.envs``, imported without the lines MuJoCo prints when its optional ``warp`` backend is missing."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        from brax import envs
    return envs


def brax_names() -> list[str]:
    """Names of the registered Brax environments."""
    return sorted(_brax_envs()._envs)  # the registry behind brax.envs.get_environment


def _unpack_gymnax_step(out: tuple) -> tuple[Any, Any, jax.Array, jax.Array]:
    if len(out) == 6:  # gymnax >= 1.0: obs, state, reward, terminated, truncated, info
        obs, state, reward, terminated, truncated, _ = out
        return obs, state, reward, jnp.logical_or(terminated, truncated)
    if len(out) == 5:  # gymnax 0.x: obs, state, reward, done, info
        obs, state, reward, done, _ = out
        return obs, state, reward, jnp.asarray(done, bool)
    raise RuntimeError(f"gymnax env.step returned {len(out)} values; expected 5 or 6")


def gymnax_env(name: str, env_params: dict[str, Any] | None = None, **make_kwargs: Any) -> Env:
    """Wrap a gymnax environment.

    Args:
        name: a gymnax id such as ``"CartPole-v1"`` or ``"Pendulum-v1"``.
        env_params: overrides of the environment's numeric parameters
            (e.g. ``{"max_steps_in_episode": 200}``).
        **make_kwargs: passed to ``gymnax.make``.

    Returns:
        the :class:`Env`.
    """
    import gymnax
    from gymnax.environments import spaces

    if name not in gymnax.registered_envs:
        raise ValueError(f"{name!r} is not a gymnax environment; known: {', '.join(gymnax.registered_envs)}")
    env, params = gymnax.make(name, **make_kwargs)
    if env_params:
        unknown = set(env_params) - set(vars(params))
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)} for {name}; it has {sorted(vars(params))}")
        params = params.replace(**env_params)
    action_space = env.action_space(params)
    obs_shape = env.observation_space(params).shape
    if isinstance(action_space, spaces.Discrete):
        discrete, action_size, low, high = True, int(action_space.n), None, None
    elif isinstance(action_space, spaces.Box):
        discrete, action_size = False, int(np.prod(action_space.shape))
        low = np.broadcast_to(np.asarray(action_space.low, np.float32), (action_size,)).copy()
        high = np.broadcast_to(np.asarray(action_space.high, np.float32), (action_size,)).copy()
    else:
        raise ValueError(f"{name}: action space {type(action_space).__name__} is not supported (Discrete or Box)")
    action_shape = tuple(action_space.shape)

    def reset(key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = env.reset(key, params)
        return jnp.ravel(obs).astype(jnp.float32), state

    # gymnax's own ``step`` also computes a reset at every step (auto-reset); the fitness masks
    # everything after an episode's end, so the raw transition plus the time limit suffices.
    raw_step = hasattr(env, "is_truncated")

    def step(key: jax.Array, state: Any, action: jax.Array) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
        if not discrete:
            action = jnp.reshape(action, action_shape)
        if raw_step:
            obs, state, reward, terminated, _ = env.step_env(key, state, action, params)
            done = jnp.logical_or(terminated, env.is_truncated(state, params))
        else:
            obs, state, reward, done = _unpack_gymnax_step(env.step(key, state, action, params))
        return jnp.ravel(obs).astype(jnp.float32), state, jnp.asarray(reward, jnp.float32), done

    return Env(
        name=name,
        library="gymnax",
        obs_size=int(np.prod(obs_shape)),
        discrete=discrete,
        action_size=action_size,
        action_low=low,
        action_high=high,
        max_steps=int(params.max_steps_in_episode),
        reset=reset,
        step=step,
        raw=(env, params),
    )


def brax_env(name: str, episode_length: int = 1000, backend: str | None = None, **env_kwargs: Any) -> Env:
    """Wrap a Brax environment (no auto-reset; ``done`` marks termination or the time limit).

    Args:
        name: a Brax environment name such as ``"hopper"``, ``"ant"``, ``"inverted_pendulum"``.
        episode_length: time limit of an episode (``done`` is set when it is reached).
        backend: physics backend (``"generalized"``, ``"positional"``, ``"spring"``, ``"mjx"``);
            ``None`` keeps the environment's own default.
        **env_kwargs: passed to the environment's constructor.

    Returns:
        the :class:`Env`. Brax dynamics are deterministic, so ``step`` ignores its key.
    """
    import warnings

    envs = _brax_envs()
    if name not in envs._envs:
        raise ValueError(f"{name!r} is not a Brax environment; known: {', '.join(brax_names())}")
    if backend is not None:
        env_kwargs["backend"] = backend
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not actively being maintained.*")
        env = envs.create(name, episode_length=int(episode_length), auto_reset=False, **env_kwargs)
    size = int(env.action_size)

    # Brax's pipelines rely on implicit rank promotion; allow it inside Brax only.
    def reset(key: jax.Array) -> tuple[jax.Array, Any]:
        with jax.numpy_rank_promotion("allow"):
            state = env.reset(key)
        return state.obs.astype(jnp.float32), state

    def step(key: jax.Array, state: Any, action: jax.Array) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
        del key
        with jax.numpy_rank_promotion("allow"):
            state = env.step(state, jnp.asarray(action, jnp.float32))
        return state.obs.astype(jnp.float32), state, state.reward.astype(jnp.float32), state.done > 0.5

    return Env(
        name=name,
        library="brax",
        obs_size=int(env.observation_size),
        discrete=False,
        action_size=size,
        action_low=-np.ones(size, np.float32),
        action_high=np.ones(size, np.float32),
        max_steps=int(episode_length),
        reset=reset,
        step=step,
        raw=env,
    )


def make_env(name: str, **kwargs: Any) -> Env:
    """Make a gymnax or Brax environment by name.

    gymnax ids are tried first (``"CartPole-v1"``, ``"Pendulum-v1"``, MinAtar, bsuite ...),
    then Brax names (``"hopper"``, ``"ant"``, ``"inverted_pendulum"`` ...).

    Args:
        name: the environment's name.
        **kwargs: passed to :func:`gymnax_env` or :func:`brax_env`.

    Raises:
        ValueError: when neither library knows the name (the message lists both).
    """
    import gymnax

    if name in gymnax.registered_envs:
        return gymnax_env(name, **kwargs)
    brax = brax_names()
    if name in brax:
        return brax_env(name, **kwargs)
    raise ValueError(
        f"unknown environment {name!r}. gymnax: {', '.join(gymnax.registered_envs)}. "
        f"Brax: {', '.join(brax)}. (MuJoCo Playground is not installed here.)"
    )
