"""Evolve an existing Flax model with EGGROLL, without rewriting it.

:func:`apply_flax` runs a Flax **linen** module on one member's parameters
(as :func:`eggroll.member` builds them: matrix leaves are
:class:`~eggroll.lowrank.LowRank`). Calls of ``nn.Dense``, ``nn.DenseGeneral``
and ``nn.Embed`` (``__call__`` and ``attend``) are intercepted with
``nn.intercept_methods``: the layer runs on the shared base kernel and the
rank-``r`` correction is added, so under ``vmap`` over members the base matmul
is one GEMM for the whole population and no per-member matrix exists. Only the
stock methods are intercepted (not a subclass that overrides ``__call__``), and
only calls see the correction: a head that reads the table directly
(``x @ self.wte.embedding.T``) sees the unperturbed table, so write a tied head
as ``Embed.attend``.

:func:`apply_nnx` does the same for **NNX** models split into
``(graphdef, state)``: ``nnx.Linear`` and ``nnx.Embed`` instances of the merged
copy are switched to low-rank-aware subclasses for that call only.

A low-rank leaf that no supported layer consumed (in ``apply_flax``: of a
module that ran) raises an error instead of silently running unperturbed; mark
such leaves full-rank with the strategy's ``lowrank=`` filter, or use
``es.materialize``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from eggroll import lowrank as lr

_UNUSED_HINT = (
    "These leaves carry low-rank noise but no supported layer (linen Dense / DenseGeneral / Embed, "
    "nnx Linear / Embed, not subclasses overriding their call) used them, so the members would run unperturbed. Pass "
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


def _dense_general_delta(module, x, w: lr.LowRank, key: tuple):
    if module.batch_dims:
        raise NotImplementedError(
            f"{'/'.join(map(str, key[1:]))}: eggroll.apply_flax does not support DenseGeneral with batch_dims; build "
            "the strategy with lowrank= returning False for this kernel (full-rank noise), or evaluate "
            "es.materialize(population)"
        )
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    axes = tuple(sorted(a % x.ndim for a in axes))  # Flax lays the kernel out in ascending axis order
    k = len(axes)
    x = jnp.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    xa = jnp.tensordot(x.astype(w.a.dtype), w.a, axes=(tuple(range(x.ndim - k, x.ndim)), tuple(range(k))))
    return xa @ w.b.T


@functools.cache  # flax is imported lazily
def _linen_methods() -> dict:
    """The stock linen methods apply_flax perturbs: method -> (leaf name, correction(module, x, w, key))."""
    import flax.linen as nn

    return {
        nn.Dense.__call__: ("kernel", lambda mod, x, w, key: lr.delta(x, w.a, w.b)),
        nn.DenseGeneral.__call__: ("kernel", _dense_general_delta),
        nn.Embed.__call__: ("embedding", lambda mod, ids, w, key: _embed_delta(w, ids)),
        nn.Embed.attend: ("embedding", lambda mod, q, w, key: _attend_delta(w, q)),
    }


def apply_flax(model: Any, variables: Any, *args: Any, method: Any = None, **kwargs: Any) -> Any:
    """``model.apply(variables, *args)`` where ``variables`` may hold LowRank leaves.

    Args:
        model: a ``flax.linen.Module``.
        variables: one member's variables, e.g. ``eggroll.member(population, i)``
            (either the full ``{"params": ...}`` mapping, a ``FrozenDict`` too, or just the params).
            If the strategy's solution holds more collections than ``params`` (BatchNorm's
            ``batch_stats``), build it with ``trainable=lambda path, leaf: path[0].key == "params"``,
            or the running statistics are perturbed and "evolved" too.
        *args: passed to ``model.apply``.
        method: as in ``model.apply``; low-rank leaves of modules this method never calls are
            not checked (their output does not matter).
        **kwargs: passed to ``model.apply``.

    Returns:
        What ``model.apply`` returns for this member.
    """
    import flax.linen as nn

    if not (isinstance(variables, Mapping) and "params" in variables):
        variables = {"params": variables}
    lows = _lowrank_leaves(variables)
    used: set[tuple] = set()
    entered: set[tuple] = {()}  # module paths whose methods ran (the root: `method` may be a plain function)

    def interceptor(next_fun, args, kwargs, context):
        mod, name = context.module, context.method_name
        if name != "setup":
            entered.add(mod.path)
        leaf, correction = _linen_methods().get(getattr(type(mod), name, None), (None, None))
        key = ("params", *mod.path, leaf)
        w = lows.get(key) if leaf else None
        if w is None:
            return next_fun(*args, **kwargs)
        used.add(key)
        y = next_fun(*args, **kwargs)
        _check_seen(mod.get_variable("params", leaf), w, key)
        return _added(y, correction(mod, (*args, *kwargs.values())[0], w, key))

    with nn.intercept_methods(interceptor):
        out = model.apply(lr.base_tree(variables), *args, method=method, **kwargs)
    _check_used({k for k in lows if k[1:-1] in entered} - used)
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


def _check_used(unused: set) -> None:
    if unused:
        names = sorted("/".join(map(str, k)) for k in unused)
        raise ValueError(f"Low-rank leaves not consumed: {names}. {_UNUSED_HINT}")


def _added(y: jax.Array, delta: jax.Array) -> jax.Array:
    """A layer's output plus its low-rank correction, in the output's dtype."""
    return y + delta.astype(y.dtype)


def _embed_delta(w: lr.LowRank, ids: jax.Array) -> jax.Array:
    """What a low-rank embedding ``A B^T`` adds to the looked-up rows ``ids``."""
    return jnp.take(w.a, ids, axis=0) @ w.b.T


def _attend_delta(w: lr.LowRank, query: jax.Array) -> jax.Array:
    """What a low-rank embedding ``A B^T`` adds to ``attend(query)`` (``query B A^T``)."""
    return (query.astype(w.b.dtype) @ w.b) @ w.a.T


def _refuse_out_sharding(out_sharding: Any) -> None:
    if out_sharding is not None:
        raise ValueError(
            "eggroll.apply_nnx cannot honour out_sharding= on a layer with low-rank noise; drop the argument, or "
            "build the strategy with lowrank= returning False for this layer's leaf (full-rank noise)"
        )


@functools.cache  # the subclasses are built once, on first use (flax is imported lazily)
def _nnx_classes():
    from flax import nnx

    class LowRankLinear(nnx.Linear):
        def __call__(self, inputs, out_sharding=None):
            _refuse_out_sharding(out_sharding)
            w = self._eggroll_lowrank
            return _added(super().__call__(inputs), lr.delta(inputs, w.a, w.b))

    class LowRankEmbed(nnx.Embed):
        def __call__(self, inputs, out_sharding=None):
            _refuse_out_sharding(out_sharding)
            return _added(super().__call__(inputs), _embed_delta(self._eggroll_lowrank, inputs))

        def attend(self, query, out_sharding=None):
            _refuse_out_sharding(out_sharding)
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
        The method's output for this member, only: state updates of the merged copy (NNX ``Rngs``
        counters, ``BatchStat``) are dropped, so e.g. ``nnx.Dropout`` draws the same mask on
        every call; pass fresh keys through the method's arguments if members need new ones.
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
    _check_used(set(lows) - used)
    return getattr(model, method)(*args, **kwargs)
