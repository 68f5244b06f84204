"""Populations and how to evaluate them.

An OpenAI-ES population is an ordinary stacked pytree (leading axis = member),
exactly what evosax returns. An EGGROLL population is a
:class:`LowRankPopulation`: the shared mean plus, per noise index, the factors
``A`` and ``B`` of each matrix leaf and the Gaussian noise of each other leaf.
It never holds ``N`` copies of the parameters; :func:`member` builds the view
one member sees, in which matrix leaves are :class:`~eggroll.lowrank.LowRank`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from eggroll import lowrank
from eggroll.noise import pair_and_sign


@struct.dataclass
class LowRankPopulation:
    """A low-rank population: light, shared mean plus per-noise-index factors.

    Attributes:
        mean: the current mean (same pytree as the solution), not batched.
        noise: per leaf, ``(A, B)`` with shapes ``(P, *rows, r)`` and
            ``(P, cols, r)`` for low-rank leaves, an array ``(P, *shape)`` for
            full-rank leaves, ``None`` for frozen ones; ``P`` is the number of
            noise indices (``N / 2`` with antithetic sampling).
        sigma: the perturbation scale of this generation.
        index: ``int32[N]`` member ids (``jnp.arange(N)``); shard this axis to
            spread members over devices.
        antithetic: members ``2k`` and ``2k + 1`` share noise with opposite signs.
        rank: the rank ``r`` of the matrix perturbations.
    """

    mean: Any
    noise: Any
    sigma: jax.Array
    index: jax.Array
    antithetic: bool = struct.field(pytree_node=False, default=True)
    rank: int = struct.field(pytree_node=False, default=1)

    @property
    def population_size(self) -> int:
        return self.index.shape[0]


def _is_noise_leaf(x: Any) -> bool:
    return x is None or isinstance(x, tuple)


def member(population: Any, i: jax.Array) -> Any:
    """The parameters member ``i`` evaluates.

    For a :class:`LowRankPopulation`, matrix leaves come back as
    :class:`~eggroll.lowrank.LowRank` (use :func:`eggroll.lowrank.matmul` and
    friends, or :func:`eggroll.apply_flax`), other leaves as perturbed arrays.
    For a stacked pytree (OpenAI-ES, evosax) it is ``population[i]``.
    """
    if not isinstance(population, LowRankPopulation):
        return jax.tree.map(lambda x: x[i], population)
    pair, sign = pair_and_sign(i, population.antithetic)
    scale = population.sigma * sign

    def one(m, noise):
        if noise is None:
            return m
        if isinstance(noise, tuple):
            a, b = noise
            a_i = a[pair] * (scale / math.sqrt(population.rank))
            return lowrank.LowRank(m, a_i, b[pair])
        return (m.astype(jnp.float32) + scale * noise[pair]).astype(m.dtype)

    return jax.tree.map(one, population.mean, population.noise, is_leaf=lambda x: x is None)


def member_ids(population: Any) -> jax.Array:
    """``int32[N]`` ids of the members of any population."""
    if isinstance(population, LowRankPopulation):
        return population.index
    return jnp.arange(jax.tree.leaves(population)[0].shape[0], dtype=jnp.int32)


def evaluate(fn: Callable[..., jax.Array], population: Any, *args: Any) -> jax.Array:
    """``fitness[i] = fn(member(population, i), *args)`` for every member, vmapped.

    ``args`` are shared by all members. For per-member inputs write the vmap
    yourself: ``jax.vmap(lambda i, x: fn(member(pop, i), x))(member_ids(pop), xs)``.

    Args:
        fn: scores one member's parameters; returns a scalar.
        population: what ``ask`` returned (any strategy).
        *args: extra arguments passed unchanged to ``fn``.

    Returns:
        ``float[N]`` fitness values.
    """
    if not isinstance(population, LowRankPopulation):
        return jax.vmap(lambda m: fn(m, *args))(population)
    return jax.vmap(lambda i: fn(member(population, i), *args))(population.index)


def materialize(population: Any) -> Any:
    """Stacked dense parameters ``(N, ...)``: for small problems and evosax-style fitness."""
    if not isinstance(population, LowRankPopulation):
        return population
    return jax.vmap(lambda i: lowrank.materialize_tree(member(population, i)))(population.index)
