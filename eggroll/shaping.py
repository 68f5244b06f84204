"""Fitness shaping: pure functions from raw fitness to update weights.

Every function takes fitness in the *minimisation* sign (lower is better;
strategies flip rewards first when built with ``maximize=True``) and returns
weights in the same sign: the ES gradient estimate is
``g = 1 / (N sigma) * sum_i w_i eps_i`` and the optimizer descends along it.
Non-finite values (NaN, +-inf) are ranked worst by :func:`sanitize` before
shaping, so they can never push the parameters. Finite values near the float32
limit can still overflow the update under ``"identity"`` shaping; a strategy
then skips that step (mean and optimizer state unchanged, ``grad_norm`` not
finite) rather than write inf or NaN into the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def sanitize(fitness: jax.Array) -> jax.Array:
    """Replace NaN / inf by the worst finite value (all non-finite -> zeros)."""
    finite = jnp.isfinite(fitness)
    worst = jnp.max(jnp.where(finite, fitness, -jnp.inf))
    worst = jnp.where(jnp.isfinite(worst), worst, 0.0)
    return jnp.where(finite, fitness, worst)


def centered_rank(fitness: jax.Array) -> jax.Array:
    """Ranks scaled to [-0.5, 0.5] (OpenAI-ES); tied values share their average rank.

    Sharing ranks matters: a flat fitness landscape (or a group of members that
    all failed) must give zero weights, not an arbitrary order. A lone member
    has the middle rank: weight 0.
    """
    n = fitness.shape[0]
    if n == 1:
        return jnp.zeros(fitness.shape, jnp.float32)
    ordered = jnp.sort(fitness)
    lo = jnp.searchsorted(ordered, fitness, side="left")
    hi = jnp.searchsorted(ordered, fitness, side="right") - 1
    # rank r in [0, n - 1] maps to r / (n - 1) - 0.5 = (2r - (n - 1)) / (2 (n - 1)); the numerator is an exact
    # integer, so the middle rank (ties of a flat landscape) is exactly 0 even where XLA turns the division
    # into a multiplication by a rounded reciprocal.
    return (lo + hi - (n - 1)).astype(jnp.float32) / (2 * (n - 1))


def z_score(fitness: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``(f - mean) / std`` over the population."""
    f = fitness.astype(jnp.float32)
    return (f - f.mean()) / (f.std() + eps)


def identity(fitness: jax.Array) -> jax.Array:
    """No shaping (raw fitness minus nothing): use with care."""
    return fitness.astype(jnp.float32)


def group_z_score(fitness: jax.Array, group_size: int, eps: float = 1e-8) -> jax.Array:
    """Subtract each group's mean, divide by one population-wide scale (EGGROLL).

    Members ``[g * group_size, (g + 1) * group_size)`` share an input (a
    prompt, a text chunk, an environment seed); comparing them only with each
    other removes the input's difficulty from the signal. The scale is the std
    of the *centred* values (the pooled within-group spread). The official
    EGGROLL code divides by the std of the raw fitness instead, which lets
    differences in difficulty between inputs shrink the step; we do not.
    """
    f = fitness.astype(jnp.float32).reshape(-1, group_size)
    centered = f - f.mean(axis=1, keepdims=True)
    return (centered / (centered.std() + eps)).reshape(-1)


SHAPERS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "centered_rank": centered_rank,
    "z_score": z_score,
    "identity": identity,
}


def resolve(shaping: str | Callable, group_size: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """Turn a shaping name (or callable) into a function ``fitness -> weights``."""
    if group_size is not None:
        if shaping not in ("z_score", "group_z_score"):
            raise ValueError(
                f"group_size={group_size} uses group-wise z-scores; set fitness_shaping='z_score' "
                f"(got {shaping!r}) or leave group_size=None."
            )
        return lambda f: group_z_score(f, group_size)
    if callable(shaping):
        return shaping
    if shaping not in SHAPERS:
        raise ValueError(f"Unknown fitness_shaping {shaping!r}; choose one of {sorted(SHAPERS)} or a callable.")
    return SHAPERS[shaping]
