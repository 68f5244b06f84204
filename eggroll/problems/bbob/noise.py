"""The noise of COCO's ``bbob-noisy`` suite (functions 101..130), reproduced draw for draw.

COCO 2.8.2 (``suite_bbob_noisy_utilities.c``, ``transform_obj_*_noise.c``) draws its noise from
two global counters, ``RANDSEED`` (uniform draws) and ``RANDNSEED`` (normal draws). Both start at
30 when a ``cocoex.Suite`` is created; a draw first adds one to its counter (wrapping to 1 after
1e9), then returns the first number of the legacy generator seeded with it:
``bbob2009_unif(1, seed)`` or ``bbob2009_gauss(1, seed)`` (see :mod:`~eggroll.problems.bbob.coco_rng`).
Each evaluation of a noisy problem takes

=============  ===============  ==============  ==========================================
noise          uniform draws    normal draws    value (``d`` = noise-free ``f - fopt``)
=============  ===============  ==============  ==========================================
Gaussian       0                1 (``N``)       ``d exp(beta N)``
uniform        2 (``u1, u2``)   0               ``d u1^beta max(1, (1e9 / (d + 1e-99))^(alpha u2))``
Cauchy         1 (``u``)        2 (``n1, n2``)  ``d + max(0, alpha (1000 + [u < p] n1 / |n2 + 1e-199|))``
=============  ===============  ==============  ==========================================

and then adds ``1.01e-8`` and ``100 sum(max(0, |x_i| - 5)^2)`` (COCO's boundary handling). Here the
counters are explicit inputs: :func:`apply_noise` takes the two counter values *before* the
evaluation, so the noise is a pure function of them (jittable, vmappable, no hidden state), and
:func:`coco_noise_seeds` gives the counters cocoex holds when points are evaluated in a given order.
With those counters the values equal cocoex's to float64 rounding; with any other counters (e.g.
drawn from a JAX key) the noise has COCO's distribution.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.bbob.functions import penalty

__all__ = ["COCO_FIRST_SEED", "apply_noise", "coco_noise_seeds", "draws_per_evaluation", "legacy_gauss", "legacy_unif"]

Array = jax.Array

COCO_FIRST_SEED = 30
"""The value both of COCO's noise counters hold after ``cocoex.Suite(...)`` is created."""

_WRAP = 1_000_000_000


def _step(s: Array) -> Array:
    """One Park-Miller step (Schrage's factorisation; every intermediate fits in int32)."""
    tmp = s // 127773
    s = 16807 * (s - tmp * 127773) - 2836 * tmp
    return jnp.where(s < 0, s + 2147483647, s)


def _legacy_uniforms(seed: Array, n: int) -> list[Array]:
    """The first ``n`` numbers of ``bbob2009_unif(r, n, seed)`` for an int32 (traced) seed."""
    s = jnp.maximum(jnp.abs(jnp.asarray(seed, jnp.int32)), 1)
    states = []
    for _ in range(40 + n):
        s = _step(s)
        states.append(s)
    table = jnp.stack(states[8:40][::-1])  # table[i] = state after step 40 - i
    current = table[0]
    out = []
    for j in range(n):
        slot = current // 67108865
        current = table[slot]
        table = table.at[slot].set(states[40 + j])
        out.append(current)
    return out


def legacy_unif(seed: Array, dtype: jnp.dtype = jnp.float32) -> Array:
    """``bbob2009_unif(1, seed)``: the first uniform of COCO's legacy generator seeded with ``seed``."""
    (r,) = _legacy_uniforms(seed, 1)
    u = r.astype(dtype) / jnp.asarray(2.147483647e9, dtype)
    return jnp.where(u == 0, jnp.asarray(1e-99, dtype), u)


def legacy_gauss(seed: Array, dtype: jnp.dtype = jnp.float32) -> Array:
    """``bbob2009_gauss(1, seed)``: Box-Muller (cosine branch) on the generator's first two uniforms."""
    r0, r1 = _legacy_uniforms(seed, 2)
    scale = jnp.asarray(2.147483647e9, dtype)
    u0 = jnp.where(r0 == 0, jnp.asarray(1e-99, dtype), r0.astype(dtype) / scale)
    u1 = jnp.where(r1 == 0, jnp.asarray(1e-99, dtype), r1.astype(dtype) / scale)
    g = jnp.sqrt(-2.0 * jnp.log(u0)) * jnp.cos(2.0 * math.pi * u1)
    return jnp.where(g == 0, jnp.asarray(1e-99, dtype), g)


def _next(seed: Array, k: int) -> Array:
    """The counter after ``k`` increments from ``seed`` (COCO wraps above 1e9 to 1)."""
    return (jnp.asarray(seed, jnp.int32) + (k - 1)) % _WRAP + 1


def draws_per_evaluation(function: int) -> tuple[int, int]:
    """``(uniform, normal)`` draws one evaluation of ``bbob-noisy`` function ``function`` takes."""
    return ((0, 1), (2, 0), (1, 2))[(int(function) - 101) % 3]


def _parameters(function: int, dimension: int) -> tuple[float, float]:
    """The noise model's two parameters: Gaussian ``(beta, -)``, uniform ``(alpha, beta)``, Cauchy ``(alpha, p)``."""
    f, kind = int(function), (int(function) - 101) % 3
    moderate = f <= 106
    if kind == 0:
        return (0.01 if moderate else 1.0), 0.0
    if kind == 1:
        alpha = 0.49 + 1.0 / dimension
        return (0.01 * alpha, 0.01) if moderate else (alpha, 1.0)
    return (0.01, 0.05) if moderate else (1.0, 0.2)


def apply_noise(
    function: int, delta: Array, x: Array, useed: Array, nseed: Array, fopt: Array | float | None = None
) -> Array:
    """Turns the noise-free ``f - fopt`` of one point into COCO's noisy ``f - fopt``.

    Args:
        function: the ``bbob-noisy`` function id 101..130 (static).
        delta: noise-free ``f(x) - fopt`` (a scalar; :func:`~eggroll.problems.bbob.functions.delta`).
        x: the point, ``(D,)`` (for the boundary penalty).
        useed: COCO's uniform counter ``RANDSEED`` before this evaluation (int).
        nseed: COCO's normal counter ``RANDNSEED`` before this evaluation (int).
        fopt: the problem's optimal value. Given and in float64, the multiplicative models see
            ``f - fopt`` rounded as COCO computes it, ``(delta + fopt) - fopt``: near the optimum the
            uniform model multiplies ``f - fopt`` by up to ``(1e9 / (f - fopt))^alpha``, which turns
            COCO's rounding of ``fopt`` (1e-14 absolute) into relative differences of 1e-9. In float32
            (where that rounding would erase ``f - fopt`` below ~1e-5) ``delta`` is used as it is.

    Returns:
        The noisy ``f - fopt`` in ``delta``'s dtype.
    """
    f, d = int(function), x.shape[-1]
    dtype = delta.dtype
    kind = (f - 101) % 3
    a, b = _parameters(f, d)
    if fopt is not None and dtype == jnp.float64 and kind != 2:
        fopt = jnp.asarray(fopt, dtype)
        delta = (delta + fopt) - fopt
    if kind == 0:
        value = delta * jnp.exp(a * legacy_gauss(_next(nseed, 1), dtype))
    elif kind == 1:
        u1, u2 = legacy_unif(_next(useed, 1), dtype), legacy_unif(_next(useed, 2), dtype)
        tiny = 1e-99 if dtype == jnp.float64 else float(jnp.finfo(dtype).tiny)  # 1e-99 is 0 in float32
        scaling = jnp.maximum(jnp.power(1e9 / (delta + tiny), a * u2), 1.0)
        value = delta * (jnp.power(u1, b) * scaling)
    else:
        u = legacy_unif(_next(useed, 1), dtype)
        n1, n2 = legacy_gauss(_next(nseed, 1), dtype), legacy_gauss(_next(nseed, 2), dtype)
        ratio = n1 / jnp.abs(n2 + (1e-199 if dtype == jnp.float64 else 0.0))
        cauchy = a * jnp.where(u < b, 1e3 + ratio, 1e3)
        value = delta + jnp.maximum(cauchy, 0.0)
    return value + 1.01e-8 + 100.0 * penalty(x)


def coco_noise_seeds(
    functions: list[int] | tuple[int, ...], evaluations: int, start: tuple[int, int] = (COCO_FIRST_SEED,) * 2
) -> tuple[np.ndarray, np.ndarray]:
    """COCO's counters before each evaluation when problems are evaluated one after the other.

    Problem ``k`` (of function ``functions[k]``) evaluates ``evaluations`` points in order, then
    problem ``k + 1`` does, as when looping over a fresh ``cocoex.Suite``.

    Args:
        functions: the function id of each problem, in evaluation order.
        evaluations: points per problem.
        start: the ``(RANDSEED, RANDNSEED)`` counters before the first evaluation (30, 30 for a fresh suite).

    Returns:
        ``(useed, nseed)``, int32 arrays of shape ``(len(functions), evaluations)``.
    """
    per = np.array([draws_per_evaluation(f) for f in functions], dtype=np.int64).reshape(-1, 2)
    steps = np.repeat(per[:, None, :], evaluations, axis=1).reshape(-1, 2)
    before = np.concatenate([np.zeros((1, 2), np.int64), np.cumsum(steps, axis=0)[:-1]]) + np.asarray(start)
    wrapped = (before - 1) % _WRAP + 1
    return tuple(wrapped[:, i].reshape(len(per), evaluations).astype(np.int32) for i in range(2))
