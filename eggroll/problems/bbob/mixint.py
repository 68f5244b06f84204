"""COCO's ``bbob-mixint`` suite (24 functions, dimensions 5..160, 4/5 of the variables integer) in JAX.

COCO 2.8.2 (``suite_bbob_mixint.c``, ``transform_vars_discretize.c``) builds each problem on a
continuous one: the ``bbob`` function below 50 dimensions, the ``bbob-largescale`` one from 50 on.
The ``D`` variables form five equal groups; the first four are integers with 2, 4, 8 and 16 values
(``0..n-1``), the last group is continuous (``[-5, 5]``). An integer ``x_i`` is rounded, clipped to
``[0, n-1]`` and mapped onto ``n`` evenly spaced points of ``[-4 + 8/(n+1), 4 - 8/(n+1)]``, shifted by
an offset that puts the continuous optimum on the nearest of those points; the value is then
multiplied by a per-function factor (:data:`SCALING_FACTORS`), and so is ``fopt``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.bbob import functions as _fn
from eggroll.problems.bbob import largescale as _ls
from eggroll.problems.bbob.instances import FUNCTION_IDS, BBOBInstance, make_instance

__all__ = ["MIXINT_DIMENSIONS", "SCALING_FACTORS", "MixintInstance", "make_mixint_instance", "mixint_delta"]

MIXINT_DIMENSIONS: tuple[int, ...] = (5, 10, 20, 40, 80, 160)
"""The dimensions of COCO's ``bbob-mixint`` suite."""

SCALING_FACTORS: tuple[float, ...] = (
    1.0, 1e-3, 1e-1, 1e-1, 1.0, 1e-2, 1.0, 1e-2, 1e-2, 1e-3, 1e-2, 1e-4,
    1e-1, 1.0, 1e-1, 1.0, 10.0, 1.0, 10.0, 1e-1, 1.0, 1.0, 10.0, 1e-1,
)  # fmt: skip
"""COCO's ``suite_bbob_mixint_scaling_factors`` for f1..f24."""

CARDINALITIES: tuple[int, ...] = (2, 4, 8, 16)
"""Values of the four integer groups; the fifth group is continuous."""

LARGESCALE_FROM = 50
"""COCO uses the ``bbob-largescale`` functions from this dimension on."""


class MixintInstance(NamedTuple):
    """One ``bbob-mixint`` problem: its continuous problem and the discretisation.

    Attributes:
        fid, iid: function and instance ids.
        fopt: the mixint optimal value (the continuous one times the factor).
        xopt: an optimum in the mixint coordinates (integers in the first ``4 D / 5`` coordinates).
        inner: the continuous problem (:class:`BBOBInstance` below 50-D, else ``LargeScaleInstance``).
        cardinality: values per coordinate (0 for continuous), float ``(D,)``.
        values: ``values[i, k]``, the continuous coordinate that integer value ``k`` of ``x_i`` maps to
            (COCO's grid point minus its offset, computed in COCO's order of operations so the points
            are bit-identical), ``(D, 16)``; zeros for the continuous coordinates.
        factor: the value scaling ``()``.
    """

    fid: np.ndarray
    iid: np.ndarray
    fopt: np.ndarray
    xopt: np.ndarray
    inner: BBOBInstance | _ls.LargeScaleInstance
    cardinality: np.ndarray
    values: np.ndarray
    factor: np.ndarray

    @property
    def dimension(self) -> int:
        """The search-space dimension ``D``."""
        return int(np.shape(self.xopt)[-1])


def validate_mixint(function: object, instance: object, dimension: object) -> tuple[int, int, int]:
    """Checks a ``bbob-mixint`` (function, instance, dimension) triple and returns it as ints."""
    for name, value in (("function", function), ("instance", instance), ("dimension", dimension)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"bbob-mixint {name} id must be an integer, got {value!r} ({type(value).__name__}).")
    f, i, d = int(function), int(instance), int(dimension)
    if f not in FUNCTION_IDS:
        raise ValueError(f"Unknown bbob-mixint function id {f}: the suite has functions 1..24.")
    if not 1 <= i <= 99999:
        raise ValueError(f"Invalid bbob-mixint instance id {i}: use a positive integer below 100000 (COCO uses 1-15).")
    if d % 5 or not (5 <= d <= 40 or LARGESCALE_FROM <= d <= _ls.MAX_LARGESCALE_DIMENSION):
        raise ValueError(
            f"Unsupported bbob-mixint dimension {d}: use a multiple of 5 in 5..40 or 50..640 "
            f"(COCO's suite uses {', '.join(map(str, MIXINT_DIMENSIONS))})."
        )
    return f, i, d


def _grid(cardinality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``inner_l, inner_u`` of COCO's discretisation of ``[-4, 4]`` into ``n`` values."""
    n = np.maximum(cardinality, 2.0)
    return -4.0 + 8.0 / (n + 1.0), 4.0 - 8.0 / (n + 1.0)


def _coco_best_parameter(function: int, inner: BBOBInstance | _ls.LargeScaleInstance) -> np.ndarray:
    """The optimum COCO's continuous problem reports, which the discretisation's offset is built on.

    It is the true optimum except for Schwefel (f20), where COCO carries the raw function's 420.96874633
    through the transformations while the optimum sits at 420.96874637 (4e-10 apart), so the offset,
    and every mixint f20 value, follows COCO's number.
    """
    if function != 20:
        return inner.xopt
    half = 0.5 * 4.2096874637
    return inner.sign * ((420.96874633 / 100.0 - 2.0 * half) + 2.0 * half) / 2.0


def make_mixint_instance(function: int, instance: int, dimension: int) -> MixintInstance:
    """Builds the data of ``bbob-mixint`` function ``function``, instance ``instance``, in ``dimension``-D.

    Raises:
        ValueError: for an unknown function, instance or dimension.
    """
    f, inst, d = validate_mixint(function, instance, dimension)
    inner = make_instance(f, inst, d) if d < LARGESCALE_FROM else _ls.make_largescale_instance(f, inst, d)
    card = np.zeros(d)
    for g, n in enumerate(CARDINALITIES):
        card[g * (d // 5) : (g + 1) * (d // 5)] = n
    is_int = card > 0
    lo, hi = _grid(card)
    upper = np.maximum(card - 1.0, 1.0)
    outer = upper * (_coco_best_parameter(f, inner) - lo) / (hi - lo)
    outer = np.clip(np.floor(outer + 1e-7 + 0.5), 0.0, upper)
    approx = lo + (hi - lo) * outer / upper
    offset = np.where(is_int, approx - _coco_best_parameter(f, inner), 0.0)
    k = np.arange(max(CARDINALITIES), dtype=np.float64)
    values = lo[:, None] + (hi - lo)[:, None] * k[None, :] / upper[:, None] - offset[:, None]
    values = np.where(is_int[:, None], values, 0.0)
    factor = SCALING_FACTORS[f - 1]
    return MixintInstance(
        fid=np.asarray(f, dtype=np.int32),
        iid=np.asarray(inst, dtype=np.int32),
        fopt=np.asarray(factor * float(inner.fopt), dtype=np.float64),
        xopt=np.where(is_int, outer, inner.xopt).astype(np.float64),
        inner=inner,
        cardinality=card,
        values=values,
        factor=np.asarray(factor, dtype=np.float64),
    )


def to_inner(p: MixintInstance, x: jax.Array) -> jax.Array:
    """Maps one mixint point ``(D,)`` to the continuous problem's coordinates."""
    is_int = p.cardinality > 0
    k = jnp.clip(_fn._round(x), 0.0, jnp.maximum(p.cardinality - 1.0, 0.0)).astype(jnp.int32)
    grid = jnp.take_along_axis(p.values, k[:, None], axis=1)[:, 0]
    return jnp.where(is_int, jnp.where(jnp.isnan(x), jnp.nan, grid), x)  # NaN stays NaN, as in COCO


def mixint_delta(fid: int, p: MixintInstance, x: jax.Array) -> jax.Array:
    """``f(x) - fopt`` of ``bbob-mixint`` function ``fid`` (known at trace time) at one point ``x``."""
    dtype = jnp.result_type(x, jnp.float32)
    p = jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, p)
    xi = to_inner(p, x)
    if isinstance(p.inner, _ls.LargeScaleInstance):
        inner = _ls.largescale_delta(fid, p.inner, xi)
    else:
        inner = _fn.delta_static(fid, p.inner, xi)
    return p.factor * inner
