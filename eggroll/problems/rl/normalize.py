"""Running observation statistics (Welford / Chan), as OpenAI-ES keeps them.

The statistics live in the fitness function's state and are updated once per
generation from every observation the population's policies actually saw
(steps after an episode ended are masked out). A batch is summarised by its
count and by sums of ``x - shift`` and ``(x - shift)**2`` taken around the
current running mean (``shift``), which keeps the sums small, and merged with
Chan et al.'s parallel update, so the result equals a Welford pass over all
observations seen so far.

Example:
    >>> import jax.numpy as jnp
    >>> s = init_stats(2)
    >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    >>> shift = shift_for(s, x[0])
    >>> s = update(s, *batch_moments(x, jnp.ones(2), shift), shift)
    >>> s.mean.tolist(), variance(s).tolist()
    ([2.0, 4.0], [1.0, 4.0])
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RunningStats(NamedTuple):
    """Running mean and sum of squared deviations of a vector stream.

    Attributes:
        count: number of vectors seen (``float32`` scalar).
        mean: their mean, shape ``(size,)``.
        m2: the sum of squared deviations from the mean, shape ``(size,)``.
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def init_stats(size: int) -> RunningStats:
    """Empty statistics for vectors of length ``size`` (normalisation is the identity)."""
    return RunningStats(jnp.zeros((), jnp.float32), jnp.zeros(size, jnp.float32), jnp.zeros(size, jnp.float32))


def variance(stats: RunningStats) -> jax.Array:
    """Population variance of everything seen; 1 until two vectors have been seen."""
    return jnp.where(stats.count > 1.0, stats.m2 / jnp.maximum(stats.count, 1.0), 1.0)


def normalize(stats: RunningStats, obs: jax.Array, clip: float = 10.0, eps: float = 1e-8) -> jax.Array:
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` for one observation or a batch."""
    mean = jnp.broadcast_to(stats.mean, obs.shape)
    scale = jnp.broadcast_to(jnp.sqrt(variance(stats) + eps), obs.shape)
    z = (obs - mean) / scale
    return jnp.clip(z, -clip, clip)


def shift_for(stats: RunningStats, sample: jax.Array) -> jax.Array:
    """The value to centre a batch's sums on: the running mean, or ``sample`` before any data.

    Centring on a value close to the data keeps float32 sums of squares accurate
    (a first batch centred on 0 would lose the variance of a large-mean feature).
    """
    return jnp.where(stats.count > 0, stats.mean, sample)


def batch_moments(obs: jax.Array, mask: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked count and shifted first/second sums of a batch ``obs`` of shape ``(..., size)``.

    Args:
        obs: observations, any leading shape, last axis the observation.
        mask: 1 where an observation counts, 0 where it does not; shape ``obs.shape[:-1]``.
        shift: the value subtracted before summing (see :func:`shift_for`).

    Returns:
        ``(count, sum(x - shift), sum((x - shift) ** 2))`` over the counted observations.
    """
    m = mask.astype(jnp.float32)[..., None]
    d = (obs - jnp.broadcast_to(shift, obs.shape)) * m
    axes = tuple(range(obs.ndim - 1))
    return jnp.sum(m), jnp.sum(d, axis=axes), jnp.sum(d * d, axis=axes)


def update(
    stats: RunningStats, count: jax.Array, sum1: jax.Array, sum2: jax.Array, shift: jax.Array | None = None
) -> RunningStats:
    """Merge a batch, given by :func:`batch_moments`, into the running statistics.

    Args:
        stats: the current statistics.
        count: number of observations in the batch (may be 0: nothing changes).
        sum1: ``sum(x - shift)`` over the batch.
        sum2: ``sum((x - shift) ** 2)`` over the batch.
        shift: the shift the sums were taken around; defaults to ``stats.mean``.

    Returns:
        the statistics of everything seen so far plus the batch.
    """
    shift = stats.mean if shift is None else shift
    n = jnp.maximum(count, 1.0)
    batch_mean = shift + sum1 / n
    batch_m2 = jnp.maximum(sum2 - sum1 * sum1 / n, 0.0)
    total = stats.count + count
    frac = jnp.where(total > 0, count / jnp.maximum(total, 1.0), 0.0)
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * frac
    m2 = stats.m2 + batch_m2 + delta * delta * stats.count * frac
    keep = count > 0
    return RunningStats(total, jnp.where(keep, mean, stats.mean), jnp.where(keep, m2, stats.m2))
