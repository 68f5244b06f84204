"""The 24 noiseless BBOB functions in pure JAX.

Each ``_fN(p, x)`` maps one point ``x`` of shape ``(D,)`` and one
:class:`~eggroll.problems.bbob.instances.BBOBInstance` ``p`` to ``f(x) - fopt``
(the *precision*), following COCO's C code transformation by transformation
(``f_*_bbob_problem_allocate`` in coco-experiment 2.8.2). Working with
``f - fopt`` keeps the digits that matter in float32; the full value is
``delta + fopt``.

:func:`delta` dispatches on ``p.fid`` with :func:`jax.lax.switch`, so it works
with a traced function id: under ``vmap`` over a batch of instances of different
functions every branch is computed and the right one selected (simple, but 24x
the work); :class:`~eggroll.problems.bbob.suite.BBOBSuite` instead groups the
problems by function so each point is evaluated only by its own function.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.bbob.instances import NOISY_BASE, BBOBInstance

__all__ = ["BRANCHES", "NOISE_FREE", "NOISY_BASE", "delta", "delta_static", "tosz", "tasy", "penalty"]

Array = jax.Array


def _ramp(d: int, dtype: jnp.dtype) -> Array:
    """``k / (D - 1)`` for ``k = 0..D-1``."""
    return jnp.arange(d, dtype=dtype) / (d - 1.0)


def _mv(m: Array, v: Array) -> Array:
    """``m @ v``, materialised.

    The optimisation barrier stops XLA from fusing the matrix-vector product into
    the (vmapped) element-wise consumers, where the CPU backend would otherwise
    recompute it for every element (e.g. 101x for Gallagher's peaks: 30x slower).
    """
    return jax.lax.optimization_barrier(m @ v)


def _safe_log_abs(x: Array) -> Array:
    return jnp.log(jnp.where(x == 0, jnp.ones_like(x), jnp.abs(x)))


def tosz(x: Array) -> Array:
    """COCO's oscillation ``T_osz`` (element-wise; ``tosz_uv`` with alpha = 0.1).

    COCO computes ``pow(exp(t + 0.49 (...)), 0.1)`` with ``t = log|x| / 0.1``; this
    is the same number as ``exp(0.1 t + 0.049 (...))`` (a few ulp apart) at one
    transcendental less.
    """
    log_abs = _safe_log_abs(x)
    t = log_abs / 0.1
    pos = jnp.exp(log_abs + 0.049 * (jnp.sin(t) + jnp.sin(0.79 * t)))
    neg = -jnp.exp(log_abs + 0.049 * (jnp.sin(0.55 * t) + jnp.sin(0.31 * t)))
    return jnp.where(x > 0, pos, jnp.where(x < 0, neg, jnp.zeros_like(x)))


def tasy(x: Array, beta: float) -> Array:
    """COCO's asymmetry ``T_asy^beta``: ``x_i^(1 + beta i/(D-1) sqrt(x_i))`` for positive ``x_i``."""
    d = x.shape[-1]
    xp = jnp.where(x > 0, x, jnp.ones_like(x))
    expo = 1.0 + beta * _ramp(d, x.dtype) * jnp.sqrt(xp)
    return jnp.where(x > 0, xp**expo, x)


def penalty(x: Array, bound: float = 5.0) -> Array:
    """``sum(max(0, |x_i| - bound)^2)``, COCO's boundary penalty."""
    excess = jnp.maximum(jnp.abs(x) - bound, 0.0)
    return jnp.sum(excess * excess)


def _rastrigin(z: Array) -> Array:
    d = z.shape[-1]
    return 10.0 * (d - jnp.sum(jnp.cos(2.0 * math.pi * z))) + jnp.sum(z * z)


def _ellipsoid(z: Array, cond: float) -> Array:
    return jnp.sum(cond ** _ramp(z.shape[-1], z.dtype) * z * z)


def _rosenbrock(z: Array) -> Array:
    a = z[:-1] * z[:-1] - z[1:]
    b = z[:-1] - 1.0
    return 100.0 * jnp.sum(a * a) + jnp.sum(b * b)


def _f1(p: BBOBInstance, x: Array) -> Array:
    z = x - p.xopt
    return jnp.sum(z * z)


def _f2(p: BBOBInstance, x: Array) -> Array:
    return _ellipsoid(tosz(x - p.xopt), 1e6)


def _f3(p: BBOBInstance, x: Array) -> Array:
    z = tasy(tosz(x - p.xopt), 0.2)
    return _rastrigin(10.0 ** (0.5 * _ramp(x.shape[-1], x.dtype)) * z)


def _f4(p: BBOBInstance, x: Array) -> Array:
    d = x.shape[-1]
    z = tosz(x - p.xopt)
    factor = 10.0 ** (0.5 * _ramp(d, x.dtype))
    even = (jnp.arange(d) % 2) == 0
    factor = jnp.where((z > 0) & even, 10.0 * factor, factor)
    return _rastrigin(factor * z) + 100.0 * penalty(x)


def _f5(p: BBOBInstance, x: Array) -> Array:
    d = x.shape[-1]
    best = jnp.where(p.xopt < 0, -5.0, 5.0)
    s = jnp.sign(best) * 10.0 ** _ramp(d, x.dtype)
    xx = jnp.where(x * best < 25.0, x, best)
    # COCO sums 5|s_i| - s_i xx_i; s_i (best_i - xx_i) is the same number, exactly 0 at the optimum in float32
    return jnp.sum(s * (best - xx))


def _obj_osz(y: Array) -> Array:
    """``T_osz`` applied to an objective value (``transform_obj_oscillate``)."""
    return tosz(y)


def _f6(p: BBOBInstance, x: Array) -> Array:
    z = _mv(p.m, x - p.xopt)
    w = jnp.where(z * p.xopt > 0, 1e4, 1.0)
    y = _obj_osz(jnp.sum(w * z * z))
    return y**0.9


def _round(v: Array) -> Array:
    return jnp.floor(v + 0.5)


def _f7(p: BBOBInstance, x: Array, penalty_scale: float = 1.0) -> Array:
    d = x.shape[-1]
    ramp = _ramp(d, x.dtype)
    zhat = 10.0 ** (0.5 * ramp) * (_mv(p.q, x - p.xopt))
    ztil = jnp.where(jnp.abs(zhat) > 0.5, _round(zhat), _round(10.0 * zhat) / 10.0)
    z = _mv(p.r, ztil)
    core = jnp.sum(100.0**ramp * z * z)
    value = 0.1 * jnp.maximum(jnp.abs(zhat[0]) * 1e-4, core)
    return value + penalty(x) if penalty_scale else value


def _f8(p: BBOBInstance, x: Array) -> Array:
    d = x.shape[-1]
    scale = max(1.0, math.sqrt(d) / 8.0)
    return _rosenbrock(scale * (x - p.xopt) + 1.0)


def _f9(p: BBOBInstance, x: Array) -> Array:
    return _rosenbrock(_mv(p.r, x) + 0.5)


def _f10(p: BBOBInstance, x: Array, cond: float = 1e6) -> Array:
    return _ellipsoid(tosz(_mv(p.r, x - p.xopt)), cond)


def _f11(p: BBOBInstance, x: Array) -> Array:
    z = tosz(_mv(p.r, x - p.xopt))
    return 1e6 * z[0] * z[0] + jnp.sum(z[1:] * z[1:])


def _f12(p: BBOBInstance, x: Array) -> Array:
    z = _mv(p.r, tasy(_mv(p.r, x - p.xopt), 0.5))
    return z[0] * z[0] + 1e6 * jnp.sum(z[1:] * z[1:])


def _f13(p: BBOBInstance, x: Array) -> Array:
    z = _mv(p.m, x - p.xopt)
    return z[0] * z[0] + 100.0 * jnp.sqrt(jnp.sum(z[1:] * z[1:]))


def _f14(p: BBOBInstance, x: Array) -> Array:
    z = _mv(p.r, x - p.xopt)
    expo = 2.0 + 4.0 * _ramp(x.shape[-1], x.dtype)
    return jnp.sqrt(jnp.sum(jnp.abs(z) ** expo))


def _f15(p: BBOBInstance, x: Array) -> Array:
    z = _mv(p.m, tasy(tosz(_mv(p.r, x - p.xopt)), 0.2))
    return _rastrigin(z)


_WEIERSTRASS_K = 12


def _f16(p: BBOBInstance, x: Array) -> Array:
    d = x.shape[-1]
    z = _mv(p.m, tosz(_mv(p.r, x - p.xopt)))
    k = jnp.arange(_WEIERSTRASS_K, dtype=x.dtype)
    ak = 0.5**k
    bk = 3.0**k
    f0 = jnp.sum(ak * jnp.cos(math.pi * bk))
    # (K, D) layout: under vmap over points the reductions run over a middle axis (much faster on CPU)
    terms = jnp.cos(2.0 * math.pi * bk[:, None] * (z[None, :] + 0.5)) * ak[:, None]
    s = jnp.sum(terms) / d - f0
    return 10.0 * s**3 + 10.0 / d * penalty(x)


def _schaffers(p: BBOBInstance, x: Array, penalty_scale: float = 10.0) -> Array:
    d = x.shape[-1]
    z = _mv(p.m, tasy(_mv(p.r, x - p.xopt), 0.5))
    s = z[:-1] * z[:-1] + z[1:] * z[1:]
    total = jnp.sum(s**0.25 * (1.0 + jnp.sin(50.0 * s**0.1) ** 2))
    value = (total / (d - 1.0)) ** 2
    return value + penalty_scale * penalty(x) if penalty_scale else value


def _f19(p: BBOBInstance, x: Array, facftrue: float = 10.0) -> Array:
    d = x.shape[-1]
    z = _mv(p.r, x) + 0.5
    c1 = z[:-1] * z[:-1] - z[1:]
    c2 = 1.0 - z[:-1]
    t = 100.0 * c1 * c1 + c2 * c2
    return facftrue + facftrue * jnp.sum(t / 4000.0 - jnp.cos(t)) / (d - 1.0)


def _f20(p: BBOBInstance, x: Array) -> Array:
    d = x.shape[-1]
    xhat = 2.0 * p.sign * x
    two_abs = 2.0 * jnp.abs(p.xopt)
    zhat = jnp.concatenate([xhat[:1], xhat[1:] + 0.25 * (xhat[:-1] - two_abs[:-1])])
    lam = 10.0 ** (0.5 * _ramp(d, x.dtype))
    z = 100.0 * (lam * (zhat - two_abs) + two_abs)
    excess = jnp.maximum(jnp.abs(z) - 500.0, 0.0)
    pen = jnp.sum(excess * excess)
    s = jnp.sum(z * jnp.sin(jnp.sqrt(jnp.abs(z))))
    return 0.01 * (pen + 418.9828872724339 - s / d)


def _f21(p: BBOBInstance, x: Array, penalty_scale: float = 1.0) -> Array:
    d = x.shape[-1]
    y = _mv(p.r, x)
    # (D, peaks) layout: under vmap the sum runs over a middle axis, ~15x faster on CPU than (peaks, D)
    diff = y[:, None] - p.peaks.T
    dist = jnp.sum(p.peak_scales.T * diff * diff, axis=0)
    heights = p.peak_values * jnp.exp((-0.5 / d) * dist)
    f = 10.0 - jnp.maximum(jnp.max(heights), 0.0)
    t = tosz(f)
    return t * t + penalty(x) if penalty_scale else t * t


def _f23(p: BBOBInstance, x: Array) -> Array:
    d = x.shape[-1]
    z = _mv(p.m, x - p.xopt)
    pw = 2.0 ** jnp.arange(1, 33, dtype=x.dtype)
    v = pw[:, None] * z[None, :]  # (32, D): reduce over the leading axis (fast under vmap)
    inner = jnp.sum(jnp.abs(v - _round(v)) / pw[:, None], axis=0)
    factors = (1.0 + jnp.arange(1, d + 1, dtype=x.dtype) * inner) ** (10.0 / d**1.2)
    return 10.0 / d / d * (jnp.prod(factors) - 1.0) + penalty(x)


def _f24(p: BBOBInstance, x: Array) -> Array:
    d = x.shape[-1]
    mu0 = 2.5
    s = 1.0 - 0.5 / (math.sqrt(d + 20.0) - 4.1)
    mu1 = -math.sqrt((mu0 * mu0 - 1.0) / s)
    xhat = jnp.where(p.xopt < 0, -2.0 * x, 2.0 * x)
    lam = 10.0 ** _ramp(d, x.dtype)
    z = _mv(p.r, lam * _mv(p.q, xhat - mu0))
    sum1 = jnp.sum((xhat - mu0) ** 2)
    sum2 = jnp.sum((xhat - mu1) ** 2)
    sum3 = jnp.sum(jnp.cos(2.0 * math.pi * z))
    return jnp.minimum(sum1, d + s * sum2) + 10.0 * (d - sum3) + 1e4 * penalty(x)


BRANCHES: tuple[Callable[[BBOBInstance, Array], Array], ...] = (
    _f1,
    _f2,
    _f3,
    _f4,
    _f5,
    _f6,
    _f7,
    _f8,
    _f9,
    _f10,
    _f11,
    _f12,
    _f13,
    _f14,
    _f15,
    _f16,
    _schaffers,
    _schaffers,
    _f19,
    _f20,
    _f21,
    _f21,
    _f23,
    _f24,
)
"""``BRANCHES[f - 1](instance, x) -> f(x) - fopt`` for one point ``x`` of shape ``(D,)``."""


_NOISE_FREE_VARIANT: dict[int, Callable[[BBOBInstance, Array], Array]] = {
    7: functools.partial(_f7, penalty_scale=0.0),
    10: functools.partial(_f10, cond=1e4),
    17: functools.partial(_schaffers, penalty_scale=0.0),
    19: functools.partial(_f19, facftrue=1.0),
    21: functools.partial(_f21, penalty_scale=0.0),
}

NOISE_FREE: dict[int, Callable[[BBOBInstance, Array], Array]] = {
    f: _NOISE_FREE_VARIANT.get(base, BRANCHES[base - 1]) for f, base in NOISY_BASE.items()
}
"""``NOISE_FREE[f](instance, x)``: the noise-free ``f - fopt`` of ``bbob-noisy`` function ``f`` (COCO 2.8.2:
no penalty on f113-115, f122-124 and f128-130, condition 1e4 on f116-118, ``facftrue = 1`` on f125-127)."""

_ALL: tuple[Callable[[BBOBInstance, Array], Array], ...] = BRANCHES + tuple(NOISE_FREE[f] for f in range(101, 131))
_INDEX = np.zeros(131, np.int32)
_INDEX[1:25] = np.arange(24)
_INDEX[101:131] = 24 + np.arange(30)


def _float_dtype(x: Array) -> jnp.dtype:
    return jnp.result_type(x, jnp.float32)


def delta(p: BBOBInstance, x: Array) -> Array:
    """``f(x) - fopt`` for one instance and one point, dispatching on the (possibly traced) ``p.fid``.

    Function ids 1..24 are the ``bbob`` functions, 101..130 the noise-free part of the ``bbob-noisy`` ones
    (:data:`NOISE_FREE`; the noise is :func:`eggroll.problems.bbob.noise.apply_noise`).

    Args:
        p: one instance (unbatched leaves).
        x: one point, shape ``(D,)``.

    Returns:
        A scalar in ``x``'s floating dtype.
    """
    p = jax.tree.map(lambda a: jnp.asarray(a, _float_dtype(x)) if jnp.issubdtype(a.dtype, jnp.floating) else a, p)
    index = jnp.asarray(_INDEX)[jnp.clip(jnp.asarray(p.fid, jnp.int32), 0, 130)]
    return coco_nonfinite(x, jax.lax.switch(index, _ALL, p, x))


def delta_static(fid: int, p: BBOBInstance, x: Array) -> Array:
    """Like :func:`delta` for a function id known at trace time (no switch, one branch traced)."""
    p = jax.tree.map(lambda a: jnp.asarray(a, _float_dtype(x)) if jnp.issubdtype(a.dtype, jnp.floating) else a, p)
    fid = int(fid)
    return coco_nonfinite(x, NOISE_FREE[fid](p, x) if fid > 100 else BRANCHES[fid - 1](p, x))


def coco_nonfinite(x: Array, value: Array) -> Array:
    """``value``, or COCO's answer where the point ``x`` (last axis) is not finite (``coco_evaluate_function``).

    COCO gives ``inf`` at a point holding an infinite coordinate, else ``NaN`` at a point holding a NaN. Without
    this rule a NaN point could score as the optimum (``tosz`` and the ``where`` of f5 and f6 map NaN to a finite
    value: 0 on f2, f3, f5, f6, f10, f11 and f15), and an infinite one gave NaN (``inf - inf`` in a rotation), or
    a finite value on f5.
    """
    return jnp.where(jnp.any(jnp.isinf(x), -1), jnp.inf, jnp.where(jnp.any(jnp.isnan(x), -1), jnp.nan, value))
