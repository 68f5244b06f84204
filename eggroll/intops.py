"""Integer low-rank operations: ``int8`` matrices seen through rank-``r`` integer perturbations.

The integer counterpart of :mod:`eggroll.lowrank`, shared by the integer
language model (:mod:`eggroll.models.egg`) and integer EGGROLL
(:mod:`eggroll.strategies.int_eggroll`). Values are fixed point with four
fractional bits (``16`` is "one"); every ``int8`` result is saturated to
``[-127, 127]``; products accumulate in ``int32``.

A member's matrix is an :class:`IntLowRank`; its perturbation is added inside
the ``int32`` accumulator before the rescale:
``acc += sum_j round((x . b_j) * a_j / 2**shift)``, one rounded term per rank.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ONE", "QMAX", "IntLowRank", "embed", "int8_dot", "matmul", "sat_add", "saturate", "scale_divisor"]

ONE = 16  # fixed-point "one": 4 fractional bits
QMAX = 127


class IntLowRank(NamedTuple):
    """An ``int8`` matrix seen through a rank-``r`` integer perturbation.

    The member's product is ``x W^T + sum_j round((x . b_j) a_j / 2**shift)``
    in ``int32``; nothing of size ``m x n`` beyond ``W`` itself is formed.

    Attributes:
        base: the shared ``int8`` weight, shape ``(m, n)``.
        a: ``int8`` left factor ``(m, r)``, antithetic sign folded in.
        b: ``int8`` right factor ``(n, r)``.
        shift: ``int32`` scalar, ``4 + sigma_shift`` (``sigma = 2**-sigma_shift``).
    """

    base: jax.Array
    a: jax.Array
    b: jax.Array
    shift: jax.Array


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """Give ``v`` leading unit axes up to ``ndim`` (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def scale_divisor(n: int) -> int:
    """The rescale ``16 * isqrt(n)`` applied after a matmul with fan-in ``n``."""
    return ONE * math.isqrt(n)


def _div_round(v: jax.Array, d: int) -> jax.Array:
    """Round-to-nearest (half up) integer division of ``int32`` ``v`` by a constant."""
    if d & (d - 1) == 0:
        k = d.bit_length() - 1
        return v if k == 0 else (v + (d >> 1)) >> k
    return jnp.floor_divide(v + d // 2, d)


def _shift_round(v: jax.Array, k: jax.Array) -> jax.Array:
    """``round(v / 2**k)`` (half up) for ``int32`` ``v`` and a traced shift ``k >= 1``."""
    return (v + jnp.left_shift(jnp.int32(1), k - 1)) >> k


def saturate(v: jax.Array) -> jax.Array:
    """Clip an ``int32`` array to ``[-127, 127]`` and narrow it to ``int8``."""
    return jnp.clip(v, -QMAX, QMAX).astype(jnp.int8)


def sat_add(*xs: jax.Array) -> jax.Array:
    """Saturating sum of ``int8`` arrays (exact ``int32`` sum, then :func:`saturate`)."""
    total = xs[0].astype(jnp.int32)
    for x in xs[1:]:
        total = total + _lead(x.astype(jnp.int32), total.ndim)
    return saturate(total)


def _rank_terms(u: jax.Array, f: jax.Array, shift: jax.Array) -> jax.Array:
    """``sum_j round(u_j * f_j / 2**shift)``: ``u`` (..., r) int32, ``f`` (k, r) int8 -> (..., k)."""
    prod = u[..., None, :] * _lead(f.astype(jnp.int32), u.ndim + 1)
    return jnp.sum(_shift_round(prod, shift), axis=-1)


def int8_dot(x: jax.Array, y: jax.Array, x_contract: tuple[int, ...], y_contract: tuple[int, ...]) -> jax.Array:
    """Exact ``int32`` product of ``int8`` arrays contracting axes ``x_contract`` with ``y_contract``.

    When the contracted length is not a multiple of 4, the first contracted axis of both is
    zero-padded to one (exact: zeros add nothing). XLA's GPU backend (seen with jax 0.11.2 on an
    H100) returns exactly twice the true ``int8 x int8 -> int32`` product otherwise; see
    ``benchmarks/results/gpu/README.md``.
    """
    if math.prod(x.shape[i] for i in x_contract) % 4:
        i, j = x_contract[0], y_contract[0]
        extra = -x.shape[i] % 4
        x = jnp.pad(x, [(0, extra if k == i else 0) for k in range(x.ndim)])
        y = jnp.pad(y, [(0, extra if k == j else 0) for k in range(y.ndim)])
    dims = ((tuple(x_contract), tuple(y_contract)), ((), ()))
    return jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.int32)


def matmul(x: jax.Array, w: jax.Array | IntLowRank) -> jax.Array:
    """``int8(round(x W^T / (16 isqrt(n))))`` with an ``int32`` accumulator.

    Args:
        x: ``int8`` activations ``(..., n)``.
        w: ``int8`` weight ``(m, n)`` or an :class:`IntLowRank` member view.

    Returns:
        ``int8`` array ``(..., m)``.
    """
    base = w.base if isinstance(w, IntLowRank) else w
    acc = int8_dot(x, base, (x.ndim - 1,), (1,))
    if isinstance(w, IntLowRank):
        xb = int8_dot(x, w.b, (x.ndim - 1,), (0,))
        acc = acc + _rank_terms(xb, w.a, w.shift)
    return saturate(_div_round(acc, scale_divisor(base.shape[-1])))


def embed(ids: jax.Array, w: jax.Array | IntLowRank) -> jax.Array:
    """Rows ``ids`` of an ``int8`` table (plus the member's perturbation, saturated)."""
    if not isinstance(w, IntLowRank):
        return jnp.take(w, ids, axis=0)
    rows = jnp.take(w.base, ids, axis=0).astype(jnp.int32)
    a_rows = jnp.take(w.a, ids, axis=0).astype(jnp.int32)  # (..., r)
    return saturate(rows + _rank_terms(a_rows, w.b, w.shift))
