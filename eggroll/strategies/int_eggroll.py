"""Integer EGGROLL: low-rank evolution strategies for ``int8`` models, in integers only.

The strategy evolves a pytree of ``int8`` leaves (e.g. :mod:`eggroll.models.egg`):
matrices ``(m, n)`` get rank-``r`` perturbations, vectors full-rank ones.

Noise. A table of ``table_size`` ``int8`` values ``clip(round(16 N(0, 1)))`` is
drawn once in ``init`` (the only floating-point step, outside training).
Member ``i`` of generation ``g`` reads, for leaf ``l``, a contiguous slice of
the table at offset ``hash(seed, l, g // noise_reuse, i // 2)`` (an integer
hash of counters, lowbias32 mixing), so ``tell`` regenerates every perturbation
from the counters; nothing is stored. ``seed`` starts from ``init``'s key; each
``ask`` that starts a noise period mixes 32 bits drawn from its own ``key``
into it, so the key given to ``ask`` selects the noise (as in evosax), and the
population carries the seed and counter that ``tell`` reads. A matrix takes ``(m + n) r`` entries as
``A (m, r)`` and ``B (n, r)``; a vector ``v`` takes ``2n`` entries ``s, t`` and
uses ``e = s * t`` (``int32``, standard deviation 256 like an entry of
``A B^T``). Antithetic pairs: member ``2k + 1`` uses ``-A`` (and ``-e``).

Perturbation, with ``shift = 4 + sigma_shift`` (``sigma = 2**-sigma_shift``
relative to a weight of standard deviation 16): a matrix adds
``round((x B) A^T / 2**shift)`` inside the model's ``int32`` accumulator
(:class:`eggroll.intops.IntLowRank`); a vector becomes
``sat(v + round(±e / 2**shift))``.

Update (``tell``). Fitness per pair ``F_k = sign(f_{2k+1} - f_{2k})`` (``int8``; the
sign flips with ``maximize=True``) says which mirror did better. For each leaf
``Z = sum_k F_k A_k B_k^T`` (or ``sum_k F_k e_k``) in ``int32``. Under the null
hypothesis (fitness unrelated to the noise) ``Z`` has standard deviation
``256 sqrt(K r)``, so a z-test at level ``alpha`` moves a weight by ``sign(Z)``
(``±1``) where ``|Z| > z_alpha * 256 sqrt(K r)``, and clips to ``±127``. The
threshold ``z_alpha`` comes from ``params.z_thresholds`` (``int32``, units of
1/16) indexed by the generation, so a schedule lowers the step rate over time;
``256 sqrt(K r)`` is a Python constant. ``tell`` is integer throughout; the
fitness values it receives may be floats (bits per byte), only their pairwise
order is used.

References:
    Sarkar et al., "Evolution Strategies at the Hyperscale" (EGGROLL), 2025, and
    its integer language-model code nano-egg (read for facts only).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from eggroll import shaping
from eggroll.intops import QMAX, IntLowRank, int8_dot, saturate
from eggroll.strategies._checks import as_int
from eggroll.types import Strategy

PyTree = Any
NOISE_TAG = 0x6E6F6973  # fold_in tag separating the noise seed from other uses of ask's key
FIXED = 16  # z thresholds are stored in units of 1/16
MAX_FAN_IN = (2**31 - 1) // (QMAX**3)  # largest n for which (x . b) * a fits int32: 1040


class IntEggrollParams(NamedTuple):
    """Traceable numbers of integer EGGROLL.

    Attributes:
        sigma_shift: ``int32``; ``sigma = 2**-sigma_shift``.
        z_thresholds: ``int32`` ``(S,)``; z-test threshold in units of 1/16 for
            generation ``g`` is ``z_thresholds[min(g, S - 1)]``.
    """

    sigma_shift: jax.Array
    z_thresholds: jax.Array


class IntEggrollState(NamedTuple):
    """State of integer EGGROLL.

    Attributes:
        mean: the ``int8`` solution pytree.
        generation: ``int32`` counter, advanced by ``tell``.
        seed: ``uint32`` seed of the offset hash (updated by ``ask`` from its key).
        table: ``int8`` noise table.
        best_fitness: best member fitness seen so far (user's sign).
    """

    mean: PyTree
    generation: jax.Array
    seed: jax.Array
    table: jax.Array
    best_fitness: jax.Array


class IntPopulation(NamedTuple):
    """A generation's population: counters only, no perturbation is stored.

    Attributes:
        mean: the ``int8`` solution the members perturb.
        index: ``int32`` member ids ``0 .. N-1`` (members ``2k``, ``2k+1`` are mirrors).
        counter: ``generation // noise_reuse``.
        seed: ``uint32`` hash seed.
        table: the ``int8`` noise table.
        sigma_shift: ``int32`` scalar.
    """

    mean: PyTree
    index: jax.Array
    counter: jax.Array
    seed: jax.Array
    table: jax.Array
    sigma_shift: jax.Array

    def partition_specs(self, axis: str) -> IntPopulation:
        """How this population splits over a mesh axis: member ids split, the rest replicated."""
        from jax.sharding import PartitionSpec as P

        return IntPopulation(mean=P(), index=P(axis), counter=P(), seed=P(), table=P(), sigma_shift=P())


def z_threshold_schedule(num_generations: int, alpha_start: float = 1.0, alpha_end: float = 1 / 16) -> jax.Array:
    """``int32`` z thresholds (units of 1/16) with ``1/alpha`` linear in the generation.

    ``alpha`` is the two-sided test level: ``alpha = 1`` moves every weight whose
    ``Z`` is non-zero, ``alpha = 0.05`` only those with ``|Z|`` beyond 1.96
    standard deviations. Computed once on the host with the standard library.

    Args:
        num_generations: length of the schedule (``>= 1``); later generations reuse the last entry.
        alpha_start: level at generation 0, in ``(0, 1]``.
        alpha_end: level at the last generation, in ``(0, 1]``.

    Returns:
        ``int32`` array ``(num_generations,)``.
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}.")
    for name, a in (("alpha_start", alpha_start), ("alpha_end", alpha_end)):
        if not 0 < a <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {a}.")
    normal = statistics.NormalDist()
    out = []
    for g in range(num_generations):
        frac = g / max(num_generations - 1, 1)
        alpha = 1.0 / ((1 / alpha_end - 1 / alpha_start) * frac + 1 / alpha_start)
        z = 0.0 if alpha >= 1.0 else normal.inv_cdf(1 - alpha / 2)
        out.append(round(z * FIXED))
    return jnp.asarray(out, jnp.int32)


def _mix(x: jax.Array) -> jax.Array:
    """lowbias32 integer hash (uint32 -> uint32)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _offset(seed, leaf: int, counter, pair, need: int, table_size: int) -> jax.Array:
    u = lambda v: jnp.asarray(v).astype(jnp.uint32)
    h = _mix(_mix(_mix(_mix(u(seed)) ^ u(leaf)) ^ u(counter)) ^ u(pair))
    return (h % jnp.uint32(table_size - need + 1)).astype(jnp.int32)


def _need(shape: tuple[int, ...], rank: int) -> int:
    """Table entries one member reads for a leaf: ``(m + n) r`` for a matrix, ``2 n`` for a vector."""
    return (shape[0] + shape[1]) * rank if len(shape) == 2 else 2 * shape[0]


def _leaf_noise(table, seed, leaf: int, shape, rank: int, counter, pair):
    """``(A, B)`` (``int8``) for a matrix leaf, or ``e`` (``int32``) for a vector leaf."""
    need = _need(shape, rank)
    seg = jax.lax.dynamic_slice_in_dim(table, _offset(seed, leaf, counter, pair, need, table.size), need)
    if len(shape) == 2:
        seg = seg.reshape(shape[0] + shape[1], rank)
        return seg[: shape[0]], seg[shape[0] :]
    seg = seg.astype(jnp.int32)
    return seg[: shape[0]] * seg[shape[0] :]


def member(population: IntPopulation, i: jax.Array, rank: int = 1) -> PyTree:
    """Member ``i``'s view of the solution: matrices as :class:`IntLowRank`, vectors perturbed.

    Use it inside a ``vmap`` over ``population.index``; the base matrices stay
    shared. ``rank`` must be the strategy's rank (it fixes slice lengths).
    """
    leaves, treedef = jax.tree.flatten(population.mean)
    sign = (1 - 2 * (i % 2)).astype(jnp.int32)
    shift = jnp.asarray(4 + population.sigma_shift, jnp.int32)
    out = []
    for leaf, w in enumerate(leaves):
        noise = _leaf_noise(population.table, population.seed, leaf, w.shape, rank, population.counter, i // 2)
        if w.ndim == 2:
            a, b = noise
            out.append(IntLowRank(w, (a.astype(jnp.int32) * sign).astype(jnp.int8), b, shift))
        else:
            e = noise * sign
            out.append(saturate(w.astype(jnp.int32) + ((e + jnp.left_shift(jnp.int32(1), shift - 1)) >> shift)))
    return jax.tree.unflatten(treedef, out)


def _check_solution(solution: PyTree, rank: int) -> None:
    leaves = jax.tree.leaves(solution)
    if not leaves:
        raise ValueError("int_eggroll needs a solution pytree with at least one int8 leaf.")
    for w in leaves:
        if jnp.dtype(w.dtype) != jnp.int8:
            raise ValueError(
                f"int_eggroll evolves int8 leaves only; got a leaf of dtype {w.dtype} "
                f"(shape {tuple(w.shape)}). Build the model with eggroll.models.egg.init."
            )
        if w.ndim not in (1, 2):
            raise ValueError(f"int_eggroll supports vectors and (m, n) matrices; got shape {tuple(w.shape)}.")
        if w.ndim == 2 and w.shape[1] > MAX_FAN_IN:
            raise ValueError(
                f"a matrix fan-in of {w.shape[1]} could overflow the int32 perturbation "
                f"(max {MAX_FAN_IN}); use a narrower model."
            )


def int_eggroll(
    population_size: int,
    solution: PyTree,
    rank: int = 1,
    sigma_shift: int = 4,
    z_thresholds: Sequence[int] | jax.Array | None = None,
    noise_reuse: int = 1,
    table_size: int = 2**22,
    maximize: bool = False,
) -> Strategy:
    """Build integer EGGROLL for an ``int8`` pytree.

    Args:
        population_size: even number of members ``N`` (``N/2`` antithetic pairs).
        solution: template ``int8`` pytree (vectors and ``(m, n)`` matrices).
        rank: rank ``r`` of the matrix perturbations (1 to 8).
        sigma_shift: ``sigma = 2**-sigma_shift`` (``>= 0``).
        z_thresholds: ``int32`` z-test thresholds in 1/16 units per generation
            (see :func:`z_threshold_schedule`); default: ``alpha`` from 1 to 1/16 over
            1000 generations.
        noise_reuse: keep the same perturbations for this many generations (``>= 1``).
        table_size: number of ``int8`` entries in the noise table.
        maximize: maximise fitness instead of minimising it.

    Returns:
        A :class:`eggroll.types.Strategy` whose population is an :class:`IntPopulation`;
        evaluate member ``i`` with :func:`member`.
    """
    population_size = as_int("population_size", population_size, 1)
    rank = as_int("rank", rank, 1)
    noise_reuse = as_int("noise_reuse", noise_reuse, 1)
    table_size = as_int("table_size", table_size, 1)
    sigma_shift = as_int("sigma_shift", sigma_shift, 0)  # (sigma = 2**-sigma_shift)
    if population_size < 2 or population_size % 2:
        raise ValueError(f"population_size must be an even number >= 2 (antithetic pairs), got {population_size}.")
    if not 1 <= rank <= 8:
        raise ValueError(f"rank must be between 1 and 8, got {rank}.")
    if sigma_shift < 0:
        raise ValueError(f"sigma_shift must be >= 0 (sigma = 2**-sigma_shift), got {sigma_shift}.")
    pairs = population_size // 2
    if pairs * rank * QMAX**2 >= 2**31:
        raise ValueError(f"population {population_size} x rank {rank} could overflow the int32 update sum.")
    _check_solution(solution, rank)
    shapes = [tuple(w.shape) for w in jax.tree.leaves(solution)]
    template = jax.tree.structure(solution)
    need = max(_need(s, rank) for s in shapes)
    if table_size < 2 * need:
        raise ValueError(f"table_size {table_size} is too small: a leaf needs {need} entries; use >= {4 * need}.")
    z_thresholds = z_threshold_schedule(1000) if z_thresholds is None else z_thresholds
    thresholds = jnp.atleast_1d(jnp.asarray(z_thresholds, jnp.int32))
    # null standard deviation of Z per leaf: 256 sqrt(K r) (vectors: r = 1), a Python constant
    null_sd = [round(256 * math.sqrt(pairs * (rank if len(s) == 2 else 1))) for s in shapes]

    def init(key, mean, params):
        _check_solution(mean, rank)
        got = [tuple(w.shape) for w in jax.tree.leaves(mean)]
        if jax.tree.structure(mean) != template or got != shapes:
            raise ValueError(
                f"init's mean must have the structure and shapes of the solution int_eggroll was built with "
                f"({template}, shapes {shapes}); got {jax.tree.structure(mean)}, shapes {got}."
            )
        table = jnp.clip(jnp.round(FIXED * jax.random.normal(jax.random.fold_in(key, 0), (table_size,))), -QMAX, QMAX)
        seed = jax.random.bits(jax.random.fold_in(key, 1), (), jnp.uint32)
        best = jnp.asarray(-jnp.inf if maximize else jnp.inf, jnp.float32)
        return IntEggrollState(mean, jnp.int32(0), seed, table.astype(jnp.int8), best)

    def ask(key, state, params):
        """Build the population from counters; at the start of a noise period ``key`` is mixed into the seed.

        ``key=None`` mixes nothing in: the noise then depends on ``init``'s key and the counters only.
        """
        if key is not None:
            drawn = jax.random.bits(jax.random.fold_in(key, NOISE_TAG), (), jnp.uint32)
            seed = _mix(state.seed ^ _mix(drawn))
            if noise_reuse > 1:
                seed = jnp.where(state.generation % noise_reuse == 0, seed, state.seed)
            state = state._replace(seed=seed)
        pop = IntPopulation(
            mean=state.mean,
            index=jnp.arange(population_size, dtype=jnp.int32),
            counter=state.generation // noise_reuse,
            seed=state.seed,
            table=state.table,
            sigma_shift=jnp.asarray(params.sigma_shift, jnp.int32),
        )
        return pop, state

    def tell(key, population, fitness, state, params):
        del key
        fitness = jnp.asarray(fitness)
        if fitness.shape != (population_size,) or not jnp.issubdtype(fitness.dtype, jnp.number):
            raise ValueError(
                f"fitness must have shape ({population_size},), one number per member, got {fitness.dtype}"
                f"{list(fitness.shape)}."
            )
        flat = fitness.astype(jnp.float32)
        g = shaping.sanitize(-flat if maximize else flat)  # minimisation sign; NaN / inf rank worst, as in eggroll
        pair = g.reshape(pairs, 2)
        score = jnp.sign(pair[:, 1] - pair[:, 0]).astype(jnp.int8)  # +1: the + member of the pair did better
        gen = jnp.minimum(state.generation, params.z_thresholds.shape[0] - 1)
        z16 = jnp.asarray(params.z_thresholds, jnp.int32)[gen]
        pair_ids = jnp.arange(pairs, dtype=jnp.int32)
        leaves, treedef = jax.tree.flatten(population.mean)
        table, seed, counter = population.table, population.seed, population.counter
        new, moved = [], jnp.int32(0)
        for leaf, w in enumerate(leaves):
            noise = jax.vmap(functools.partial(_leaf_noise, table, seed, leaf, w.shape, rank, counter))(pair_ids)
            if w.ndim == 2:
                a, b = noise  # (K, m, r), (K, n, r)
                fa = a * score.reshape(pairs, 1, 1)  # stays int8: score is -1, 0 or 1
                z = int8_dot(fa, b, (0, 2), (0, 2))
            else:
                z = jax.lax.dot_general(score.astype(jnp.int32), noise, (((0,), (0,)), ((), ())))
            threshold = (z16 * null_sd[leaf]) >> 4
            step = jnp.where(jnp.abs(z) > threshold, jnp.sign(z), 0)
            updated = saturate(w.astype(jnp.int32) + step)
            moved = moved + jnp.sum((updated != w).astype(jnp.int32))
            new.append(updated)
        mean = jax.tree.unflatten(treedef, new)
        best_index = jnp.argmin(g).astype(jnp.int32)
        best_gen = flat[best_index]
        sign = -1.0 if maximize else 1.0
        improved = jnp.isfinite(best_gen) & (sign * best_gen < sign * state.best_fitness)
        best = jnp.where(improved, best_gen, state.best_fitness)
        finite = jnp.isfinite(flat)
        n_finite = jnp.where(finite.any(), finite.sum(), jnp.nan)  # no finite value: NaN, not 0.0
        metrics = {  # named as eggroll's and evosax's: best_fitness is the best so far
            "best_fitness": best,
            "best_fitness_in_generation": best_gen,
            "mean_fitness": jnp.where(finite, flat, 0.0).sum() / n_finite,
            "best_index": best_index,
            "num_nonfinite": (~finite).sum(),
            "num_moved": moved,
            "z_threshold": z16,
        }
        return state._replace(mean=mean, generation=state.generation + 1, best_fitness=best), metrics

    def get_mean(state):
        return state.mean

    def materialize(population):
        """Stacked per-member parameters for inspection: matrices as float32 ``W + A B^T / 2**shift``.

        The integer forward never uses this (it rounds each rank term inside the
        accumulator instead); vectors are the members' exact ``int8`` values.
        """

        def one(i):
            return jax.tree.map(_dense, member(population, i, rank), is_leaf=lambda v: isinstance(v, IntLowRank))

        return jax.vmap(one)(population.index)

    params = IntEggrollParams(sigma_shift=jnp.int32(sigma_shift), z_thresholds=thresholds)
    return Strategy(
        init=init,
        ask=ask,
        tell=tell,
        default_params=params,
        population_size=population_size,
        name="IntEGGROLL",
        get_mean=get_mean,
        materialize=materialize,
        antithetic=True,
    )


def _dense(v: Any) -> Any:
    """An :class:`IntLowRank` as float32 ``W + A B^T / 2**shift``; a vector leaf as it is."""
    if not isinstance(v, IntLowRank):
        return v
    a, b = v.a.astype(jnp.float32), v.b.astype(jnp.float32)
    return v.base.astype(jnp.float32) + (a @ b.T) / 2.0 ** v.shift.astype(jnp.float32)


_MOVED = {"check_devices", "map_members", "replicated_tell"}  # to eggroll.parallel: this file holds the strategy only


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    from eggroll import parallel

    warnings.warn(f"int_eggroll.{name} moved to eggroll.parallel", DeprecationWarning, stacklevel=2)
    if name == "check_devices":
        return functools.partial(parallel.check_population_size, antithetic=True)
    if name == "map_members":
        return lambda fn, pop, *args, rank=1, **kw: parallel.map_members(
            fn, pop, *args, member=lambda p, i: member(p, i, rank), **kw
        )
    return parallel.replicated_tell
