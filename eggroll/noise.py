"""Counter-based noise: every perturbation is a pure function of counters.

The noise of one member is a pure function of
``(key, generation // noise_reuse, member // 2)`` (``key`` is the state's noise
key, which each ``ask`` derives from the key it is given) (``member`` without
antithetic sampling): one stream per noise index, of which each leaf takes
its own consecutive segment, in pytree order.
Nothing is stored or sent: ``tell`` rebuilds exactly what ``ask`` drew, and
every device or host can rebuild any member's noise, so only fitness values
need to move. The sign of member ``i`` with antithetic sampling is ``+1`` for
even ``i`` and ``-1`` for odd ``i``.

Two generators are available:

* ``"hash"`` (default): a counter hash (MurmurHash3's 32-bit finaliser, two
  rounds keyed by 64 bits of seed) feeding Box-Muller with a polynomial
  sine/cosine. On a CPU it draws Gaussians about 9x faster than JAX's
  threefry, which otherwise costs as much as the forward pass it perturbs
  (see benchmarks/core_throughput.py). Statistically it passes moment and
  Kolmogorov-Smirnov checks (tests/test_noise.py); it is not cryptographic,
  which ES does not need.
* ``"threefry"``: ``jax.random.normal`` on ``fold_in``-derived keys.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

FULL_RANK_NAMES = frozenset({"bias", "scale"})


def _leaf_name(path: tuple) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if names and names[-1] == "value":  # an NNX Variable's array
        names.pop()
    return names[-1] if names else ""


def path_id(path: tuple) -> int:
    """A stable 31-bit id for a pytree path (not Python's salted ``hash``)."""
    return zlib.crc32(jax.tree_util.keystr(path).encode()) & 0x7FFFFFFF


class LeafSpec(NamedTuple):
    """How one leaf of the solution is perturbed.

    Attributes:
        path: the leaf's pytree path.
        shape: its shape.
        dtype: its dtype (kept for the mean and the perturbed members).
        kind: ``"lowrank"`` (matrix, A B^T noise), ``"full"`` (Gaussian noise
            of the leaf's shape) or ``"frozen"`` (never perturbed nor updated).
        pid: :func:`path_id` of the path.
    """

    path: tuple
    shape: tuple[int, ...]
    dtype: Any
    kind: str
    pid: int


def leaf_specs(solution: Any, lowrank: Any = None, trainable: Any = None) -> list[LeafSpec]:
    """Classify the leaves of ``solution``.

    Args:
        solution: the template pytree.
        lowrank: ``None`` (every floating leaf with ``ndim >= 2`` gets low-rank
            noise, except those named in :data:`FULL_RANK_NAMES`, e.g. the 2-D
            bias of a ``DenseGeneral``), ``False`` (none does) or ``callable(path, leaf) -> bool``.
        trainable: ``None`` (every floating leaf evolves), a pytree of bools
            with the structure of ``solution``, or ``callable(path, leaf) -> bool``.

    Returns:
        One :class:`LeafSpec` per leaf, in ``jax.tree`` order.

    Raises:
        ValueError: the solution has no leaves, or none that can evolve.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(solution)
    if not flat:
        raise ValueError(
            "The solution pytree has no leaves. Pass a template with at least one floating-point "
            "array, e.g. solution=jnp.zeros(10) or the params of your model."
        )
    if trainable is None or callable(trainable):
        masks = [True if trainable is None else bool(trainable(p, x)) for p, x in flat]
    else:
        mask_leaves = jax.tree.leaves(trainable)
        if len(mask_leaves) != len(flat):
            raise ValueError(
                f"`trainable` has {len(mask_leaves)} leaves but the solution has {len(flat)}; "
                "give a pytree of bools with the solution's structure or a callable(path, leaf)."
            )
        masks = [bool(m) for m in mask_leaves]
    specs = []
    for (path, leaf), train in zip(flat, masks, strict=True):
        leaf = jnp.asarray(leaf)
        floating = jnp.issubdtype(leaf.dtype, jnp.floating)
        if not (train and floating):
            kind = "frozen"
        elif lowrank is None:
            kind = "lowrank" if (leaf.ndim >= 2 and _leaf_name(path) not in FULL_RANK_NAMES) else "full"
        elif lowrank is False:
            kind = "full"
        else:
            kind = "lowrank" if (leaf.ndim >= 2 and lowrank(path, leaf)) else "full"
        specs.append(LeafSpec(path, tuple(leaf.shape), leaf.dtype, kind, path_id(path)))
    if all(s.kind == "frozen" for s in specs):
        raise ValueError(
            "No leaf of the solution can evolve: all are non-floating or masked out by `trainable`. "
            "Evolution strategies perturb floating-point leaves (float16/32/64, bfloat16)."
        )
    return specs


_GOLDEN = 0x9E3779B9


def _fmix(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _u32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.uint32)


def hash_seeds(key, stream: int, period, pair) -> tuple[jax.Array, jax.Array]:
    """Two independent uint32 seeds for one (key, stream, period, pair)."""
    kd = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    k0, k1 = kd[0], kd[-1]
    s = _fmix(k0 ^ _fmix(k1 + jnp.uint32(stream) * jnp.uint32(_GOLDEN)))
    s = _fmix(s ^ _fmix(_u32(period) + jnp.uint32(0x632BE5AB)))
    s = _fmix(s ^ _fmix(_u32(pair) + jnp.uint32(0x85157AF5)))
    return s, _fmix(s ^ jnp.uint32(0x68E31DA4))


def _sincos_quarter(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sin and cos of ``f * pi / 2`` for ``f`` in [0, 1) (Taylor, error < 2e-6)."""
    x = f * (math.pi / 2)
    x2 = x * x
    s = x * (1 + x2 * (-1 / 6 + x2 * (1 / 120 + x2 * (-1 / 5040 + x2 * (1 / 362880)))))
    c = 1 + x2 * (-0.5 + x2 * (1 / 24 + x2 * (-1 / 720 + x2 * (1 / 40320 + x2 * (-1 / 3628800)))))
    return s, c


def _box_muller(seeds: tuple[jax.Array, jax.Array], c: jax.Array, second: bool) -> jax.Array:
    """The normals of counters ``c``: the cosine half of the pair (``second=False``) or the sine half."""
    h1 = _fmix(_fmix(c ^ seeds[0]) + seeds[1])
    h2 = _fmix(h1 ^ jnp.uint32(0x68E31DA4))
    u1 = ((h1 >> 8).astype(jnp.float32) + 0.5) * (1.0 / 16777216.0)
    radius = jnp.sqrt(-2.0 * jnp.log(u1))
    quadrant = h2 >> 30
    sn, cs = _sincos_quarter(((h2 >> 6) & 0xFFFFFF).astype(jnp.float32) * (1.0 / 16777216.0))
    if second:
        t = jnp.where(quadrant == 0, sn, jnp.where(quadrant == 1, cs, jnp.where(quadrant == 2, -sn, -cs)))
    else:
        t = jnp.where(quadrant == 0, cs, jnp.where(quadrant == 1, -sn, jnp.where(quadrant == 2, -cs, sn)))
    return radius * t


def hash_segment(seeds: tuple[jax.Array, jax.Array], start: int, size: int, total: int) -> jax.Array:
    """Entries ``start .. start + size`` of ``hash_normal(seeds, total)``, computed without the rest.

    The stream of length ``total`` is the cosine outputs of counters ``0 .. half`` followed by the
    sine outputs of the same counters (``half = ceil(total / 2)``); a segment computes only the
    counters it covers. Generating each leaf's segment on its own keeps XLA from materialising the
    whole stream and slicing it (with matrix and vector leaves mixed, a segment straddling the two
    halves made it build a concatenation of the whole stream: issue 15).
    """
    half = (total + 1) // 2
    stop = start + size
    parts = []
    if start < half:
        parts.append(_box_muller(seeds, jnp.arange(start, min(stop, half), dtype=jnp.uint32), False))
    if stop > half:
        lo = max(start, half) - half
        parts.append(_box_muller(seeds, jnp.arange(lo, stop - half, dtype=jnp.uint32), True))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def hash_normal(seeds: tuple[jax.Array, jax.Array], n: int) -> jax.Array:
    """``n`` standard normals (float32) from counters ``0..n`` and two seeds."""
    return hash_segment(seeds, 0, n, n)


def member_key(key, generation, noise_reuse: int, pair) -> jax.Array:
    """The threefry key of one (generation, pair) noise stream."""
    return jax.random.fold_in(jax.random.fold_in(key, generation // noise_reuse), pair)


def leaf_rank(spec: LeafSpec, rank: int) -> int:
    """The rank a low-rank leaf uses: ``rank``, or the smaller side of its matrix ``(prod(rows), cols)`` if less."""
    return min(rank, math.prod(spec.shape[:-1]), spec.shape[-1])


def leaf_sizes(specs: list[LeafSpec], rank: int) -> list[int]:
    """Numbers of unit Gaussians each leaf draws per noise index."""
    sizes = []
    for spec in specs:
        if spec.kind == "lowrank":
            sizes.append((math.prod(spec.shape[:-1]) + spec.shape[-1]) * leaf_rank(spec, rank))
        elif spec.kind == "full":
            sizes.append(math.prod(spec.shape))
        else:
            sizes.append(0)
    return sizes


def member_noise(key, specs, generation, noise_reuse: int, pair, rank: int, method: str = "hash") -> list:
    """Unit noise of every leaf for one noise index (float32).

    All leaves draw consecutive segments of one stream per
    ``(key, generation // noise_reuse, pair)``, in pytree order: one fused
    generator instead of one per leaf (XLA compiles many separate generators
    slowly). Low-rank leaves get ``(A (*rows, r), B (cols, r))`` (``r`` from
    :func:`leaf_rank`), full-rank
    leaves an array of their shape, frozen leaves ``None``.
    """
    sizes = leaf_sizes(specs, rank)
    total = max(sum(sizes), 1)
    if method == "hash":
        seeds = hash_seeds(key, 0, generation // noise_reuse, pair)
        draw = lambda start, size: hash_segment(seeds, start, size, total)
    elif method == "threefry":
        z = jax.random.normal(member_key(key, generation, noise_reuse, pair), (total,), jnp.float32)
        draw = lambda start, size: z[start : start + size]
    else:
        raise ValueError(f"Unknown noise method {method!r}; use 'hash' or 'threefry'.")
    out, offset = [], 0
    for spec, size in zip(specs, sizes, strict=True):
        if spec.kind == "lowrank":
            r = leaf_rank(spec, rank)
            n_a = math.prod(spec.shape[:-1]) * r
            a = draw(offset, n_a).reshape(*spec.shape[:-1], r)
            b = draw(offset + n_a, size - n_a).reshape(spec.shape[-1], r)
            out.append((a, b))
        elif spec.kind == "full":
            out.append(draw(offset, size).reshape(spec.shape))
        else:
            out.append(None)
        offset += size
    return out


def pair_and_sign(member: jax.Array, antithetic: bool) -> tuple[jax.Array, jax.Array]:
    """Noise index and sign (+1 / -1) of a member."""
    member = jnp.asarray(member, jnp.int32)
    if not antithetic:
        return member, jnp.ones((), jnp.float32)
    return member // 2, (1 - 2 * (member % 2)).astype(jnp.float32)
