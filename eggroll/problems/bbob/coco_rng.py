"""COCO's legacy BBOB-2009 random number generator and instance primitives, in NumPy.

Everything here follows ``suite_bbob_legacy_code.c`` of the COCO platform
(coco-experiment 2.8.2, ``src/cocoex/coco.c``) step by step, so that the numbers
drawn for a (function, instance, dimension) are the ones COCO draws:

* :func:`unif` is the Park-Miller "minimal standard" generator (16807 mod 2^31 - 1,
  via Schrage's factorisation) behind a 32-slot Bays-Durham shuffle table, warmed
  up with 40 draws.
* :func:`gauss` turns ``2N`` of those uniforms into ``N`` normals with the
  Box-Muller cosine branch (first half radii, second half angles).
* :func:`rotation` fills a matrix column-major with normals and orthonormalises
  its columns by classical Gram-Schmidt, in COCO's loop order.
* :func:`xopt` and :func:`fopt` place the optimum on the 1e-4 grid of [-4, 4]
  and draw the optimal value from a ratio of two normals, rounded to 0.01 and
  clipped to [-1000, 1000].

These are construction-time computations (float64, small Python loops); the
results are cached because the same seeds recur across functions.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["unif", "gauss", "rotation", "xopt", "fopt", "fopt_seed", "cpow"]

_M = 2147483647  # 2^31 - 1
_A = 16807
_Q = 127773  # _M // _A
_R = 2836  # _M % _A


def _step(seed: int) -> int:
    tmp = seed // _Q  # seed > 0, so floor division equals C's (int)floor(seed / 127773.)
    seed = _A * (seed - tmp * _Q) - _R * tmp
    if seed < 0:
        seed += _M
    return seed


@functools.lru_cache(maxsize=4096)
def _unif_cached(n: int, inseed: int) -> tuple[float, ...]:
    if inseed < 0:
        inseed = -inseed
    if inseed < 1:
        inseed = 1
    seed = inseed
    table = [0] * 32
    for i in range(39, -1, -1):
        seed = _step(seed)
        if i < 32:
            table[i] = seed
    current = table[0]
    out = [0.0] * n
    for i in range(n):
        seed = _step(seed)
        slot = current // 67108865
        current = table[slot]
        table[slot] = seed
        r = current / 2.147483647e9
        out[i] = r if r != 0.0 else 1e-99
    return tuple(out)


def unif(n: int, seed: int) -> np.ndarray:
    """``n`` uniform numbers in (0, 1] exactly as COCO's ``bbob2009_unif(r, n, seed)``.

    Args:
        n: how many numbers.
        seed: the (integer) seed; negative seeds are mirrored, seeds below 1 become 1.

    Returns:
        A float64 array of shape ``(n,)``.
    """
    return np.array(_unif_cached(int(n), int(seed)), dtype=np.float64)


def gauss(n: int, seed: int) -> np.ndarray:
    """``n`` standard normals exactly as COCO's ``bbob2009_gauss(g, n, seed)``."""
    u = unif(2 * n, seed)
    # math's log and cos are the C library's, as in COCO; NumPy's vectorised log can differ by an ulp
    g = np.array([math.sqrt(-2.0 * math.log(u[i])) * math.cos(2.0 * math.pi * u[n + i]) for i in range(n)])
    return np.where(g == 0.0, 1e-99, g)


def cpow(base: float | np.ndarray, exponent: float | np.ndarray) -> np.ndarray:
    """``base ** exponent`` element by element with the C library's ``pow``, as COCO computes it.

    NumPy's vectorised ``power`` differs from C's in the last bit for ~5% of arguments; instance
    constants built from it then differ from COCO's, which matters where a function amplifies ulps.
    """
    b, e = np.broadcast_arrays(np.asarray(base, np.float64), np.asarray(exponent, np.float64))
    return np.array([math.pow(x, y) for x, y in zip(b.ravel().tolist(), e.ravel().tolist(), strict=True)]).reshape(
        b.shape
    )


def _sequential_dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` added left to right as COCO's C loop adds it (``np.dot`` sums in another order,
    which moves the rotation by an ulp; Katsuura's ``2^32 z`` turns that into 1e-9 relative in 160-D)."""
    return float(np.cumsum(a * b)[-1])


@functools.lru_cache(maxsize=1024)
def _rotation_cached(seed: int, dim: int) -> np.ndarray:
    # B[i][j] = g[j * dim + i]: the normals fill the matrix column by column.
    b = gauss(dim * dim, seed).reshape(dim, dim).T.copy()
    for i in range(dim):
        for j in range(i):
            prod = _sequential_dot(b[:, i], b[:, j])
            b[:, i] -= prod * b[:, j]
        b[:, i] /= math.sqrt(_sequential_dot(b[:, i], b[:, i]))
    b.setflags(write=False)
    return b


def rotation(seed: int, dim: int) -> np.ndarray:
    """The ``dim x dim`` orthogonal matrix of COCO's ``bbob2009_compute_rotation``."""
    return _rotation_cached(int(seed), int(dim)).copy()


def xopt(seed: int, dim: int) -> np.ndarray:
    """The optimum location of COCO's ``bbob2009_compute_xopt`` (grid of 1e-4 in [-4, 4])."""
    x = 8.0 * np.floor(1e4 * unif(dim, seed)) / 1e4 - 4.0
    return np.where(x == 0.0, -1e-5, x)


def fopt_seed(function: int) -> int:
    """The seed offset COCO uses for the optimal value of ``function`` (f4 uses 3, f18 uses 17)."""
    return {4: 3, 18: 17}.get(int(function), int(function))


def fopt(function: int, instance: int) -> float:
    """The optimal f-value of COCO's ``bbob2009_compute_fopt(function, instance)``."""
    rrseed = fopt_seed(function) + 10000 * int(instance)
    g1 = gauss(1, rrseed)[0]
    g2 = gauss(1, rrseed + 1)[0]
    # C's floor(x + 0.5), not Python's banker's rounding.
    return float(min(1000.0, max(-1000.0, math.floor(100.0 * 100.0 * g1 / g2 + 0.5) / 100.0)))
