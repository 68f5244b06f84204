"""Low-rank perturbed matrices, used without ever forming them.

A member of an EGGROLL population sees each matrix leaf ``W`` (shape
``(*rows, cols)``) as ``W + a @ b.T`` where ``a`` has shape ``(*rows, r)`` and
``b`` has shape ``(cols, r)`` and the scale ``sigma / sqrt(r)`` (and the
antithetic sign) is already folded into ``a``. :class:`LowRank` carries the
three pieces; the functions here apply such a matrix the cheap way:

* ``matmul(x, w)``:  ``x @ W + (x @ a) @ b.T``  (Flax kernel layout, ``x @ W``)
* ``embed(ids, w)``: ``W[ids] + a[ids] @ b.T``
* ``attend(q, w)``:  ``q @ W.T + (q @ b) @ a.T``  (a tied output head)

Each accepts a plain array too, so one model function serves the mean, a
perturbed member, and a ``vmap`` over members (in which ``W`` stays unbatched
and XLA emits one shared GEMM plus a rank-``r`` correction per member).

Example:
    >>> import jax.numpy as jnp
    >>> w = LowRank(jnp.eye(3), jnp.ones((3, 1)), jnp.ones((3, 1)))
    >>> matmul(jnp.ones((1, 3)), w).tolist()
    [[4.0, 4.0, 4.0]]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class LowRank(NamedTuple):
    """A matrix ``base + a @ b.T`` kept in factored form.

    Attributes:
        base: the unperturbed leaf, shape ``(*rows, cols)``.
        a: left factor, shape ``(*rows, r)``, scale and sign folded in.
        b: right factor, shape ``(cols, r)``.
    """

    base: jax.Array
    a: jax.Array
    b: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.base.shape

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def rank(self) -> int:
        return self.b.shape[-1]


def is_lowrank(x: Any) -> bool:
    """True for a :class:`LowRank` (use as ``is_leaf`` in tree maps)."""
    return isinstance(x, LowRank)


def delta(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """The low-rank part of a matmul: ``x`` contracted with ``a @ b.T``.

    ``x`` has shape ``(..., *rows)`` where ``rows = a.shape[:-1]`` (one or more
    contracted axes, as in Flax ``DenseGeneral``); the result has shape
    ``(..., cols)``.
    """
    k = a.ndim - 1
    xa = jnp.tensordot(x.astype(a.dtype), a, axes=(tuple(range(x.ndim - k, x.ndim)), tuple(range(k))))
    return xa @ b.T


def matmul(x: jax.Array, w: jax.Array | LowRank) -> jax.Array:
    """``x @ w`` for a plain or a :class:`LowRank` matrix (Flax kernel layout)."""
    if not isinstance(w, LowRank):
        return x @ w
    y = x @ w.base
    return y + delta(x, w.a, w.b).astype(y.dtype)


def embed(ids: jax.Array, w: jax.Array | LowRank) -> jax.Array:
    """Rows ``ids`` of a plain or :class:`LowRank` embedding table."""
    if not isinstance(w, LowRank):
        return jnp.take(w, ids, axis=0)
    rows = jnp.take(w.base, ids, axis=0)
    return rows + (jnp.take(w.a, ids, axis=0) @ w.b.T).astype(rows.dtype)


def attend(q: jax.Array, w: jax.Array | LowRank) -> jax.Array:
    """``q @ w.T`` (a tied output head) for a plain or :class:`LowRank` table."""
    if not isinstance(w, LowRank):
        return q @ w.T
    y = q @ w.base.T
    return y + ((q.astype(w.b.dtype) @ w.b) @ w.a.T).astype(y.dtype)


def materialize(w: jax.Array | LowRank) -> jax.Array:
    """The dense matrix ``base + a @ b.T`` (only for small problems and tests)."""
    if not isinstance(w, LowRank):
        return w
    return (w.base + (w.a @ w.b.T).astype(w.base.dtype)).astype(w.base.dtype)


def materialize_tree(tree: Any) -> Any:
    """:func:`materialize` every :class:`LowRank` in a pytree."""
    return jax.tree.map(materialize, tree, is_leaf=is_lowrank)


def base_tree(tree: Any) -> Any:
    """Replace every :class:`LowRank` by its unperturbed base."""
    return jax.tree.map(lambda w: w.base if isinstance(w, LowRank) else w, tree, is_leaf=is_lowrank)
