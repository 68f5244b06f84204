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
        key: the noise key the factors were drawn from (``tell`` regenerates
            them from it and the state's counters; ``None`` uses the state's key).
        antithetic: members ``2k`` and ``2k + 1`` share noise with opposite signs.
        rank: the rank ``r`` of the matrix perturbations (a matrix with a
            smaller side uses that side: the width of its factors).
    """

    mean: Any
    noise: Any
    sigma: jax.Array
    index: jax.Array
    key: Any = None
    antithetic: bool = struct.field(pytree_node=False, default=True)
    rank: int = struct.field(pytree_node=False, default=1)

    @property
    def population_size(self) -> int:
        return self.index.shape[0]

    def partition_specs(self, axis: str) -> LowRankPopulation:
        """How this population splits over a mesh axis: member ids and noise split, the rest replicated."""
        from jax.sharding import PartitionSpec as P

        return self.replace(
            mean=jax.tree.map(lambda _: P(), self.mean),
            noise=jax.tree.map(lambda _: P(axis), self.noise),
            sigma=P(),
            index=P(axis),
            key=None if self.key is None else P(),
        )


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
    noise = jax.tree.map(lambda x: x[pair], population.noise)
    return _view(population.mean, noise, population.sigma * sign, population.rank)


def member_ids(population: Any) -> jax.Array:
    """``int32[N]`` ids of the members of any population."""
    if isinstance(population, LowRankPopulation):
        return population.index
    return jnp.arange(jax.tree.leaves(population)[0].shape[0], dtype=jnp.int32)


def _view(mean: Any, noise: Any, scale: jax.Array, rank: int) -> Any:
    """One member's parameters from its own noise (no population axis).

    ``rank`` is the strategy's; each low-rank leaf divides by the width of its own factors.
    """
    del rank

    def one(m, nz):
        if nz is None:
            return m
        if isinstance(nz, tuple):
            a, b = nz
            return lowrank.LowRank(m, a * (scale / math.sqrt(a.shape[-1])), b)
        return (m.astype(jnp.float32) + scale * nz).astype(m.dtype)

    return jax.tree.map(one, mean, noise, is_leaf=lambda x: x is None)


def evaluate(fn: Callable[..., Any], population: Any, *args: Any, in_axes: Any = None) -> Any:
    """``fn(member(population, i), *args)`` for every member ``i``, vmapped.

    For a :class:`LowRankPopulation` with antithetic pairs, the vmap runs over
    noise pairs and evaluates both signs of each pair (an inner vmap over the sign), so no per-member
    gather of the factors is needed and the shared base matmul stays one GEMM over all members.

    Args:
        fn: scores one member; returns a scalar (or any pytree of per-member
            outputs, e.g. ``(fitness, aux)``).
        population: what ``ask`` returned (any strategy).
        *args: extra arguments for ``fn``.
        in_axes: like ``jax.vmap``'s, one entry per arg: ``None`` (shared by all
            members, the default) or ``0`` (leading axis of size ``N``, member
            ``i`` gets row ``i``).

    Returns:
        ``fn``'s outputs stacked over members (``float[N]`` for a scalar ``fn``).

    Example:
        >>> import jax, jax.numpy as jnp, eggroll
        >>> es = eggroll.eggroll(population_size=4, solution={"w": jnp.zeros((3, 2))})
        >>> state = es.init(jax.random.key(0), {"w": jnp.zeros((3, 2))}, es.default_params)
        >>> pop, state = es.ask(jax.random.key(1), state, es.default_params)
        >>> xs = jnp.ones((4, 3))  # one input row per member
        >>> f = lambda p, x: jnp.sum(eggroll.lowrank.matmul(x, p["w"]))
        >>> eggroll.evaluate(f, pop, xs, in_axes=(0,)).shape
        (4,)
    """
    in_axes = (None,) * len(args) if in_axes is None else tuple(in_axes)
    if len(in_axes) != len(args):
        raise ValueError(f"in_axes has {len(in_axes)} entries for {len(args)} args.")
    if not isinstance(population, LowRankPopulation):
        return jax.vmap(fn, in_axes=(0, *in_axes))(population, *args)
    pop = population
    if not pop.antithetic:
        one = lambda nz, *a: fn(_view(pop.mean, nz, pop.sigma, pop.rank), *a)
        return jax.vmap(one, in_axes=(0, *in_axes))(pop.noise, *args)
    n = pop.population_size
    paired = [
        a if ax is None else jax.tree.map(lambda x: x.reshape(n // 2, 2, *x.shape[1:]), a)
        for a, ax in zip(args, in_axes, strict=True)
    ]

    signs = jnp.array([1.0, -1.0], jnp.float32)

    def pair(nz, *a):
        # both signs of a pair as an inner vmap: the base matmuls of the whole population stay one GEMM
        # (two calls, one per sign, split it in two and read the factors twice: 0.68 of inference against
        # 0.83 on the Flax MLP of benchmarks/real_models.py, same values bit for bit)
        signed = lambda s, *b: fn(_view(pop.mean, nz, s * pop.sigma, pop.rank), *b)
        return jax.vmap(signed, in_axes=(0, *(None if ax is None else 0 for ax in in_axes)))(signs, *a)

    out = jax.vmap(pair, in_axes=(0, *in_axes))(pop.noise, *paired)
    return jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), out)


def materialize(population: Any) -> Any:
    """Stacked dense parameters ``(N, ...)``: for small problems and evosax-style fitness."""
    if not isinstance(population, LowRankPopulation):
        return population
    return jax.vmap(lambda i: lowrank.materialize_tree(member(population, i)))(population.index)
