"""Evaluating BBOB problems: single functions and whole suites in one compiled call."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.bbob import functions as _fn
from eggroll.problems.bbob import largescale as _ls
from eggroll.problems.bbob import mixint as _mi
from eggroll.problems.bbob import noise as _noise
from eggroll.problems.bbob.instances import (
    FUNCTION_NAMES,
    BBOBInstance,
    make_instance,
    stack_instances,
    validate_ids,
)

__all__ = ["BBOBSuite", "bbob_function", "check_points", "evaluate", "parse_ids"]


def check_points(x: object, dimension: int, *, what: str = "x") -> jax.Array:
    """Validates points for a ``dimension``-D BBOB problem and returns them as a JAX array.

    Args:
        x: array-like of shape ``(..., dimension)`` with a floating dtype.
        dimension: the problem dimension ``D``.
        what: the argument name used in error messages.

    Raises:
        ValueError: for a non-floating dtype or a last axis that is not ``D``.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        x = np.asarray(x)
        dtype = x.dtype
        if dtype.kind in "iu":  # plain Python lists of numbers are accepted as floats
            x = x.astype(np.float64)
            dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"BBOB {what} must have a floating dtype, got {dtype}: convert it first, "
            f"e.g. jnp.asarray({what}, jnp.float32)."
        )
    shape = tuple(np.shape(x))
    if len(shape) == 0 or shape[-1] != dimension:
        raise ValueError(
            f"BBOB {what} has shape {shape} but this problem is {dimension}-dimensional: "
            f"pass points of shape ({dimension},) or (n, {dimension})."
        )
    return jnp.asarray(x)


def _point_delta(kind: str, fid: int) -> Callable[[Any, jax.Array], jax.Array]:
    """``(instance, x) -> f(x) - fopt`` for one point of function ``fid`` of COCO suite ``kind``."""
    if kind == "bbob-largescale":
        return functools.partial(_ls.largescale_delta, fid)
    if kind == "bbob-mixint":
        return functools.partial(_mi.mixint_delta, fid)
    return functools.partial(_fn.delta_static, fid)


def _kind(instance: Any) -> str:
    if isinstance(instance, _ls.LargeScaleInstance):
        return "bbob-largescale"
    if isinstance(instance, _mi.MixintInstance):
        return "bbob-mixint"
    return "bbob"


def _delta_points(p: Any, x: jax.Array, fid: int | None, kind: str = "bbob") -> jax.Array:
    """``f - fopt`` over any leading batch axes of ``x``."""
    flat = x.reshape((-1, x.shape[-1]))
    if kind in ("bbob-largescale", "bbob-mixint"):
        if fid is None:
            raise ValueError(f"{kind} instances need a concrete function id (no traced dispatch).")
        vals = _fn.coco_nonfinite(flat, jax.vmap(_point_delta(kind, fid), in_axes=(None, 0))(p, flat))
    elif fid is None:  # delta and delta_static apply COCO's rule for non-finite points
        vals = jax.vmap(_fn.delta, in_axes=(None, 0))(p, flat)
    else:
        vals = jax.vmap(functools.partial(_fn.delta_static, fid), in_axes=(None, 0))(p, flat)
    return vals.reshape(x.shape[:-1])


def evaluate(instance: BBOBInstance, x: jax.Array, *, subtract_fopt: bool = False) -> jax.Array:
    """Evaluates one BBOB instance at a point or a batch of points.

    Pure and jittable; ``instance`` may be traced (its function id is then
    dispatched with :func:`jax.lax.switch`), so ``jax.vmap(evaluate)`` over a
    stacked batch of instances of different functions works too. A
    ``bbob-largescale`` or ``bbob-mixint`` instance needs a concrete function id.

    Args:
        instance: a :class:`BBOBInstance` (e.g. from :func:`make_instance`).
        x: shape ``(..., D)``, floating.
        subtract_fopt: return ``f(x) - fopt`` (the precision COCO's targets use)
            instead of ``f(x)``.

    Returns:
        Values of shape ``x.shape[:-1]``.
    """
    x = check_points(x, instance.xopt.shape[-1])
    fid = None
    if isinstance(instance.fid, np.ndarray | int | np.integer) and np.ndim(instance.fid) == 0:
        fid = int(instance.fid)  # concrete id: trace only the function's own branch
    vals = _delta_points(instance, x, fid, _kind(instance))
    if subtract_fopt:
        return vals
    return vals + jnp.asarray(instance.fopt, vals.dtype)


def bbob_function(
    function: int, instance: int, dimension: int, *, subtract_fopt: bool = False, suite: str = "bbob"
) -> Callable[[jax.Array], jax.Array]:
    """A jitted ``x -> f(x)`` for one COCO BBOB problem.

    Example::

        f = bbob_function(21, instance=3, dimension=10)
        f(jnp.zeros(10))            # a scalar, equal to cocoex's value
        f(jnp.zeros((4096, 10)))    # (4096,)

    Args:
        function: 1..24 (101..130 for ``bbob-noisy``, noise-free values).
        instance: COCO instance id.
        dimension: 2..40 (``bbob-largescale``: 2..640; ``bbob-mixint``: multiples of 5 in 5..40, 50..640).
        subtract_fopt: return ``f(x) - fopt`` instead of ``f(x)``.
        suite: ``"bbob"``, ``"bbob-noisy"``, ``"bbob-largescale"`` or ``"bbob-mixint"``.

    Raises:
        ValueError: for an unknown function, instance or dimension; the returned
            function raises for points of the wrong size or dtype.
    """
    data = make_instance(function, instance, dimension, suite)
    fid = int(data.fid)
    device_data = jax.tree.map(jnp.asarray, data)

    @jax.jit
    def _run(p: Any, x: jax.Array) -> jax.Array:
        vals = _delta_points(p, x, fid, suite)
        return vals if subtract_fopt else vals + p.fopt.astype(vals.dtype)

    def f(x: jax.Array) -> jax.Array:
        return _run(device_data, check_points(x, dimension))

    f.__doc__ = f"BBOB f{fid} ({FUNCTION_NAMES[fid]}), instance {instance}, {dimension}-D."
    f.instance = data  # type: ignore[attr-defined]
    return f


def parse_ids(spec: str | int | Iterable[int]) -> list[int]:
    """Parses ``"1-5,7,10-12"`` (or an int, or an iterable of ints) into a sorted unique list.

    Raises:
        ValueError: for a malformed specification.
    """
    if isinstance(spec, int | np.integer):
        return [int(spec)]
    if not isinstance(spec, str):
        out = sorted({int(v) for v in spec})
        if not out:
            raise ValueError("Empty id list: give at least one id, e.g. '1-5'.")
        return out
    ids: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                ids.update(range(a, b + 1))
            else:
                ids.add(int(part))
        except ValueError:
            raise ValueError(
                f"Cannot parse id range {part!r} in {spec!r}: use comma-separated ints and ranges like '1-5,7'."
            ) from None
    if not ids:
        raise ValueError(f"Empty id list {spec!r}: give at least one id, e.g. '1-5'.")
    return sorted(ids)


class BBOBSuite:
    """A set of BBOB problems of one dimension, evaluated together in one compiled call.

    The problems are every ``(function, instance)`` pair of the given lists, in
    function-major order (like cocoex). Their data is stacked into one
    :class:`BBOBInstance` with a leading problem axis (``suite.data``); at
    evaluation the problems are grouped by function (a static grouping, known at
    trace time), and each group is ``vmap``-ed over its instances and the points,
    so every point costs only its own function.

    Example::

        suite = BBOBSuite(functions=range(1, 25), instances=[1], dimension=10)
        f = suite.evaluate(jnp.zeros((4096, 10)))           # (24, 4096)
        g = suite.evaluate_each(jnp.zeros((24, 64, 10)))     # (24, 64): own points per problem

    Args:
        functions: function ids or a spec string like ``"1-24"`` (default: all of the suite's,
            1..24 for ``bbob``, 101..130 for ``bbob-noisy``).
        instances: COCO instance ids or a spec string like ``"1-15"``.
        dimension: 2..40 (``bbob-largescale``: 2..640, ``bbob-mixint``: multiples of 5 in 5..40, 50..640).
        suite: ``"bbob"``, ``"bbob-noisy"``, ``"bbob-largescale"`` or ``"bbob-mixint"``. A ``bbob-noisy``
            suite evaluates the noise-free functions unless ``noise_seeds`` are given (see
            :mod:`eggroll.problems.bbob.noise`).

    Raises:
        ValueError: for unknown ids or dimensions.
    """

    def __init__(
        self,
        functions: str | Iterable[int] | None = None,
        instances: str | Iterable[int] = (1,),
        dimension: int = 10,
        *,
        suite: str = "bbob",
    ) -> None:
        if functions is None:
            functions = range(101, 131) if suite == "bbob-noisy" else range(1, 25)
        fids = parse_ids(functions)
        iids = parse_ids(instances)
        for f in fids:
            for i in iids:
                validate_ids(f, i, dimension, suite)
        self.suite = suite
        self.dimension = int(dimension)
        self.problems: list[tuple[int, int]] = [(f, i) for f in fids for i in iids]
        self.data: Any = stack_instances([make_instance(f, i, dimension, suite) for f, i in self.problems])
        groups: dict[int, list[int]] = {}
        for k, (f, _) in enumerate(self.problems):
            groups.setdefault(f, []).append(k)
        self.groups: tuple[tuple[int, tuple[int, ...]], ...] = tuple((f, tuple(ix)) for f, ix in groups.items())
        self._device_data: BBOBInstance | None = None

    def __len__(self) -> int:
        return len(self.problems)

    def __repr__(self) -> str:
        return f"BBOBSuite({len(self)} problems, dimension={self.dimension}, suite={self.suite!r})"

    @property
    def fopt(self) -> np.ndarray:
        """Optimal values, shape ``(P,)``."""
        return self.data.fopt

    @property
    def xopt(self) -> np.ndarray:
        """Optimum locations, shape ``(P, D)``."""
        return self.data.xopt

    def device_data(self) -> BBOBInstance:
        """The stacked data as JAX arrays (in the current default float precision)."""
        if self._device_data is None or self._device_data.xopt.dtype != jnp.asarray(1.0).dtype:
            self._device_data = jax.tree.map(jnp.asarray, self.data)
        return self._device_data

    def evaluate(
        self, x: jax.Array, *, subtract_fopt: bool = False, noise_seeds: tuple[Any, Any] | None = None
    ) -> jax.Array:
        """Evaluates every problem of the suite at the same points.

        Args:
            x: ``(N, D)`` (or ``(D,)``) floating points.
            subtract_fopt: return ``f - fopt`` instead of ``f``.
            noise_seeds: ``bbob-noisy`` only: COCO's ``(uniform, normal)`` noise counters before each
                evaluation, two int arrays of shape ``(P, N)`` (or ``(P,)``), e.g. from :meth:`coco_noise_seeds`;
                ``None``: the noise-free values.

        Returns:
            ``(P, N)`` (or ``(P,)``) values.
        """
        x = check_points(x, self.dimension)
        noise = self._check_noise(noise_seeds, (len(self), *x.shape[:-1]))
        return suite_evaluate(
            self.device_data(),
            x,
            self.groups,
            shared=True,
            subtract_fopt=subtract_fopt,
            noise_seeds=noise,
            kind=self.suite,
        )

    def evaluate_each(
        self, x: jax.Array, *, subtract_fopt: bool = False, noise_seeds: tuple[Any, Any] | None = None
    ) -> jax.Array:
        """Evaluates each problem at its own points.

        Args:
            x: ``(P, N, D)``: ``x[k]`` are the points for problem ``k``.
            subtract_fopt: return ``f - fopt`` instead of ``f``.
            noise_seeds: as in :meth:`evaluate`, shape ``(P, N)``.

        Returns:
            ``(P, N)`` values.
        """
        x = check_points(x, self.dimension)
        if x.ndim < 2 or x.shape[0] != len(self):
            raise ValueError(
                f"evaluate_each() needs one batch of points per problem, shape ({len(self)}, N, "
                f"{self.dimension}); got {tuple(x.shape)}. Use evaluate() to share points."
            )
        noise = self._check_noise(noise_seeds, tuple(x.shape[:-1]))
        return suite_evaluate(
            self.device_data(),
            x,
            self.groups,
            shared=False,
            subtract_fopt=subtract_fopt,
            noise_seeds=noise,
            kind=self.suite,
        )

    def coco_noise_seeds(self, evaluations: int, start: tuple[int, int] = (30, 30)) -> tuple[np.ndarray, np.ndarray]:
        """The noise counters cocoex uses when each problem, in suite order, evaluates ``evaluations`` points.

        Equal to what a fresh ``cocoex.Suite("bbob-noisy", ...)`` holding exactly these problems, looped
        over in order, uses (see :func:`eggroll.problems.bbob.noise.coco_noise_seeds`).
        """
        return _noise.coco_noise_seeds([f for f, _ in self.problems], evaluations, start)

    def _check_noise(self, noise_seeds: tuple[Any, Any] | None, shape: tuple[int, ...]) -> tuple | None:
        if noise_seeds is None:
            return None
        if self.suite != "bbob-noisy":
            raise ValueError(f"noise_seeds is for suite='bbob-noisy'; this suite is {self.suite!r}.")
        try:
            useed, nseed = noise_seeds
        except (TypeError, ValueError):
            raise ValueError("noise_seeds must be a pair (uniform counters, normal counters) of int arrays.") from None
        useed, nseed = jnp.asarray(useed), jnp.asarray(nseed)
        for name, a in (("uniform", useed), ("normal", nseed)):
            if tuple(a.shape) != shape or not jnp.issubdtype(a.dtype, jnp.integer):
                raise ValueError(
                    f"noise_seeds' {name} counters must be integers of shape {shape} (one per evaluation), "
                    f"got {a.dtype} {tuple(a.shape)}."
                )
        return useed.astype(jnp.int32), nseed.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("groups", "shared", "subtract_fopt", "kind"))
def suite_evaluate(
    data: Any,
    x: jax.Array,
    groups: Sequence[tuple[int, tuple[int, ...]]],
    *,
    shared: bool,
    subtract_fopt: bool = False,
    noise_seeds: tuple[jax.Array, jax.Array] | None = None,
    kind: str = "bbob",
) -> jax.Array:
    """Evaluates stacked problems grouped by function (the engine of :class:`BBOBSuite`).

    Args:
        data: stacked instances, leading axis ``P``.
        x: ``(..., D)`` shared points if ``shared``, else ``(P, ..., D)`` per problem.
        groups: ``((fid, (problem indices...)), ...)`` covering ``0..P-1``; static.
        shared: whether all problems see the same points.
        subtract_fopt: return ``f - fopt`` instead of ``f``.
        noise_seeds: ``bbob-noisy``: COCO's ``(uniform, normal)`` counters before each evaluation,
            each ``(P, ...)``; ``None``: noise-free values.
        kind: the COCO suite the data belongs to (``"bbob"`` also serves ``"bbob-noisy"``).

    Returns:
        ``(P, ...)`` values.
    """
    n_problems = data.fopt.shape[0]
    batch = x.shape[:-1] if shared else x.shape[1:-1]
    out = jnp.zeros((n_problems, *batch), dtype=jnp.result_type(x, jnp.float32))
    for fid, idx_tuple in groups:
        idx = np.asarray(idx_tuple)
        # a group of one problem is evaluated as two copies of it (the second dropped): XLA's CPU backend
        # handles a size-1 batch axis badly (Gallagher: ~20x slower), and an unbatched computation may round
        # differently from the same problem inside a larger group
        run_idx = np.repeat(idx, 2) if idx.size == 1 else idx
        sub = jax.tree.map(lambda a, run_idx=run_idx: a[run_idx], data)
        if shared:
            vals = jax.vmap(lambda p, fid=fid: _delta_points(p, x, fid, kind))(sub)
        else:
            vals = jax.vmap(lambda p, xs, fid=fid: _delta_points(p, xs, fid, kind))(sub, x[run_idx])
        vals = vals[: idx.size]
        if noise_seeds is not None and fid > 100:
            xs = jnp.broadcast_to(x if shared else x[idx], (idx.size, *batch, x.shape[-1]))
            noisy = jax.vmap(functools.partial(_noise.apply_noise, fid))
            fo = jnp.broadcast_to(data.fopt[idx].astype(vals.dtype).reshape((-1,) + (1,) * len(batch)), vals.shape)
            flat = noisy(
                vals.reshape(-1),
                xs.reshape(-1, x.shape[-1]),
                noise_seeds[0][idx].reshape(-1),
                noise_seeds[1][idx].reshape(-1),
                fo.reshape(-1),
            )
            vals = flat.reshape(vals.shape)
        if not subtract_fopt:
            fo = data.fopt[idx].astype(vals.dtype).reshape((-1,) + (1,) * (vals.ndim - 1))
            vals = vals + jnp.broadcast_to(fo, vals.shape)
        out = out.at[idx].set(vals)
    return out
