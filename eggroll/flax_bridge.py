"""Evolve an existing Flax model with EGGROLL, without rewriting it.

:func:`apply_flax` runs a Flax **linen** module on one member's parameters
(as :func:`eggroll.member` builds them: matrix leaves are
:class:`~eggroll.lowrank.LowRank`). Calls of ``nn.Dense``, ``nn.DenseGeneral``
and ``nn.Embed`` (``__call__`` and ``attend``) are intercepted with
``nn.intercept_methods``: the layer runs on the shared base kernel and the
rank-``r`` correction is added, so under ``vmap`` over members the base matmul
is one GEMM for the whole population and no per-member matrix exists.

:func:`apply_nnx` does the same for **NNX** models split into
``(graphdef, state)``: ``nnx.Linear`` and ``nnx.Embed`` instances of the merged
copy are switched to low-rank-aware subclasses for that call only.

A low-rank leaf that no supported layer consumed raises an error instead of
silently running unperturbed; mark such leaves full-rank with the strategy's
``lowrank=`` filter, or use ``es.materialize``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from eggroll import lowrank as lr

_UNUSED_HINT = (
    "These leaves carry low-rank noise but no supported layer (linen Dense / DenseGeneral / Embed, "
    "nnx Linear / Embed) used them, so the members would run unperturbed. Pass "
    "`lowrank=lambda path, leaf: ...` to the strategy to give them full-rank noise, or evaluate "
    "`es.materialize(population)` instead."
)


def _lowrank_leaves(tree: Any) -> dict[tuple, lr.LowRank]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=lr.is_lowrank):
        if isinstance(leaf, lr.LowRank):
            names = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
            if names and names[-1] == "value":  # an NNX Variable's array
                names = names[:-1]
            out[names] = leaf
    return out


def _dense_general_delta(module, x, w: lr.LowRank):
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    if getattr(module, "batch_dims", ()):
        raise NotImplementedError("eggroll.apply_flax does not support DenseGeneral with batch_dims.")
    axes = tuple(a % x.ndim for a in axes)
    k = len(axes)
    x = jnp.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    xa = jnp.tensordot(x.astype(w.a.dtype), w.a, axes=(tuple(range(x.ndim - k, x.ndim)), tuple(range(k))))
    return xa @ w.b.T


def apply_flax(model: Any, variables: Any, *args: Any, method: Any = None, **kwargs: Any) -> Any:
    """``model.apply(variables, *args)`` where ``variables`` may hold LowRank leaves.

    Args:
        model: a ``flax.linen.Module``.
        variables: one member's variables, e.g. ``eggroll.member(population, i)``
            (either the full ``{"params": ...}`` dict or just the params).
        *args: passed to ``model.apply``.
        method: as in ``model.apply``.
        **kwargs: passed to ``model.apply``.

    Returns:
        The model's output for this member.
    """
    import flax.linen as nn

    if not (isinstance(variables, dict) and "params" in variables):
        variables = {"params": variables}
    lows = _lowrank_leaves(variables)
    used: set[tuple] = set()

    def interceptor(next_fun, args, kwargs, context):
        mod, name = context.module, context.method_name
        embed = isinstance(mod, nn.Embed) and name in ("__call__", "attend")
        dense = isinstance(mod, nn.Dense | nn.DenseGeneral) and name == "__call__"
        key = ("params", *mod.path, "embedding" if embed else "kernel") if embed or dense else None
        w = lows.get(key)
        if w is None:
            return next_fun(*args, **kwargs)
        used.add(key)
        y = next_fun(*args, **kwargs)
        _check_seen(mod.get_variable("params", key[-1]), w, key)
        if embed:
            return _added(y, (_embed_delta if name == "__call__" else _attend_delta)(w, args[0]))
        x = args[0] if args else kwargs["inputs"]
        return _added(y, lr.delta(x, w.a, w.b) if isinstance(mod, nn.Dense) else _dense_general_delta(mod, x, w))

    with nn.intercept_methods(interceptor):
        out = model.apply(lr.base_tree(variables), *args, method=method, **kwargs)
    _check_used(lows, used)
    return out


def _check_seen(seen: Any, w: lr.LowRank, key: tuple) -> None:
    """Refuse a layer that sees only part of its low-rank leaf (inside ``nn.scan`` / ``nn.vmap``, whose stacked
    parameters the correction cannot slice)."""
    full = tuple(w.a.shape[:-1]) + tuple(w.b.shape[:-1])
    if seen is not None and tuple(seen.shape) != full:
        raise ValueError(
            f"{'/'.join(map(str, key[1:]))}: the layer uses a {tuple(seen.shape)} slice of a stacked {full} low-rank "
            "leaf (a layer inside nn.scan or nn.vmap), which apply_flax cannot perturb. Build the strategy with "
            "lowrank= returning False for the leaves of that layer stack (they get full-rank noise), or evaluate "
            "dense members (dense_population=True, or es.materialize(population) and model.apply)"
        )


def _check_used(lows: dict, used: set) -> None:
    unused = sorted("/".join(map(str, k)) for k in set(lows) - used)
    if unused:
        raise ValueError(f"Low-rank leaves not consumed: {unused}. {_UNUSED_HINT}")


def _added(y: jax.Array, delta: jax.Array) -> jax.Array:
    """A layer's output plus its low-rank correction, in the output's dtype."""
    return y + delta.astype(y.dtype)


def _embed_delta(w: lr.LowRank, ids: jax.Array) -> jax.Array:
    """What a low-rank embedding ``A B^T`` adds to the looked-up rows ``ids``."""
    return jnp.take(w.a, ids, axis=0) @ w.b.T


def _attend_delta(w: lr.LowRank, query: jax.Array) -> jax.Array:
    """What a low-rank embedding ``A B^T`` adds to ``attend(query)`` (``query B A^T``)."""
    return (query.astype(w.b.dtype) @ w.b) @ w.a.T


@functools.cache  # the subclasses are built once, on first use (flax is imported lazily)
def _nnx_classes():
    from flax import nnx

    class LowRankLinear(nnx.Linear):
        def __call__(self, inputs, out_sharding=None):
            w = self._eggroll_lowrank
            return _added(super().__call__(inputs), lr.delta(inputs, w.a, w.b))

    class LowRankEmbed(nnx.Embed):
        def __call__(self, inputs, out_sharding=None):
            return _added(super().__call__(inputs), _embed_delta(self._eggroll_lowrank, inputs))

        def attend(self, query, out_sharding=None):
            return _added(super().attend(query), _attend_delta(self._eggroll_lowrank, query))

    return {nnx.Linear: (LowRankLinear, "kernel"), nnx.Embed: (LowRankEmbed, "embedding")}


def apply_nnx(graphdef: Any, state: Any, *args: Any, method: str = "__call__", **kwargs: Any) -> Any:
    """Call an NNX model given as ``(graphdef, state)`` where ``state`` may hold LowRank leaves.

    Args:
        graphdef: from ``nnx.split(model)``.
        state: one member's state, e.g. ``eggroll.member(population, i)`` with a
            strategy built on ``solution=nnx.split(model)[1]``.
        *args: passed to the model's method.
        method: name of the method to call.
        **kwargs: passed to the model's method.

    Returns:
        The method's output for this member.
    """
    from flax import nnx

    lows = _lowrank_leaves(state)
    model = nnx.merge(graphdef, lr.base_tree(state))
    used: set[tuple] = set()
    for path, module in nnx.iter_graph(model):
        cls, leaf = _nnx_classes().get(type(module), (None, None))
        key = (*path, leaf)
        if cls is not None and key in lows:
            object.__setattr__(module, "_eggroll_lowrank", lows[key])
            module.__class__ = cls
            used.add(key)
    _check_used(lows, used)
    return getattr(model, method)(*args, **kwargs)
