"""Counter-based noise: every perturbation is a pure function of counters.

The noise of one leaf for one member is drawn from the key
``fold_in(fold_in(leaf_key, generation // noise_reuse), member // 2)`` (with
antithetic sampling; ``member`` without it), where ``leaf_key`` is the
strategy's base key folded with a stable hash of the leaf's path. Nothing is
stored or sent: ``tell`` rebuilds exactly what ``ask`` drew, and every device
or host can rebuild any member's noise, so only fitness values need to move.
The sign of member ``i`` with antithetic sampling is ``+1`` for even ``i``
and ``-1`` for odd ``i``.
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


def member_key(key: jax.Array, spec: LeafSpec, generation: jax.Array, noise_reuse: int, pair: jax.Array):
    """The key of one leaf's noise for one noise index (pair) and generation."""
    k = jax.random.fold_in(key, spec.pid)
    k = jax.random.fold_in(k, generation // noise_reuse)
    return jax.random.fold_in(k, pair)


def full_noise(key, spec: LeafSpec, generation, noise_reuse: int, pair) -> jax.Array:
    """Unit Gaussian noise of the leaf's shape (float32)."""
    return jax.random.normal(member_key(key, spec, generation, noise_reuse, pair), spec.shape, jnp.float32)


def lowrank_factors(key, spec: LeafSpec, generation, noise_reuse: int, pair, rank: int):
    """Unit Gaussian factors ``A (*rows, r)`` and ``B (cols, r)`` (float32)."""
    rows, cols = math.prod(spec.shape[:-1]), spec.shape[-1]
    z = jax.random.normal(member_key(key, spec, generation, noise_reuse, pair), ((rows + cols) * rank,))
    a = z[: rows * rank].reshape(*spec.shape[:-1], rank)
    b = z[rows * rank :].reshape(cols, rank)
    return a, b


def pair_and_sign(member: jax.Array, antithetic: bool) -> tuple[jax.Array, jax.Array]:
    """Noise index and sign (+1 / -1) of a member."""
    member = jnp.asarray(member, jnp.int32)
    if not antithetic:
        return member, jnp.ones((), jnp.float32)
    return member // 2, (1 - 2 * (member % 2)).astype(jnp.float32)
