"""COCO's ``bbob-largescale`` suite (24 functions, dimensions 20..640) in JAX, without D x D matrices.

The large-scale suite (COCO 2.8.2, ``suite_largescale.c``) replaces each rotation of ``bbob`` by a
*permuted block-diagonal* one, ``A = P_out B P_in``:

* ``B`` is block-diagonal with blocks of size ``min(D, 40)`` (the last block takes the rest); block
  ``k`` is COCO's legacy rotation drawn with seed ``seed + 1000000 k``;
* ``P_in`` and ``P_out`` permute coordinates (``(P v)_i = v_{P[i]}``); each comes from ``D``
  "truncated uniform swaps" of range ``D // 3``: the positions to swap are visited in the order of
  ``D`` uniforms drawn with the permutation's seed, and the partner of swap ``j`` is drawn uniformly
  within the range with seed ``seed + 1000 (j + 1)``. For ``D <= 40`` both are the identity.

Storing ``B`` as a ``(blocks, size, size)`` array keeps an instance at ``O(40 D)`` numbers (640-D:
16 blocks of 40 x 40) and applying it costs ``O(40 D)`` per point.

The functions follow the chains of transformations of ``f_*_permblockdiag_bbob_problem_allocate``;
most values are also multiplied by ``min(1, 40 / D)`` (``transform_obj_norm_by_dim``), which this
module applies where COCO does. Functions 1-5, 8 and 20 are not rotated; Gallagher (f21, f22)
uses one block rotation and no permutation.

Which rotation is ``r`` and which ``q`` follows the ``bbob`` convention (``r`` drawn with seed
``rseed + 1000000``, ``q`` with ``rseed``; f9 and f19 use ``rseed`` for ``r``); the permutation seeds
are ``rseed + k 1000000`` for ``k`` = 2..6 as COCO numbers them per function (see ``_PERM_SEEDS``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.bbob import coco_rng
from eggroll.problems.bbob import functions as _fn
from eggroll.problems.bbob.instances import FUNCTION_IDS, MAX_PEAKS

__all__ = [
    "LARGESCALE_DIMENSIONS",
    "MAX_BLOCK_SIZE",
    "LargeScaleInstance",
    "block_sizes",
    "block_rotation",
    "swap_permutation",
    "make_largescale_instance",
    "largescale_delta",
    "apply_rotation",
]

LARGESCALE_DIMENSIONS: tuple[int, ...] = (20, 40, 80, 160, 320, 640)
"""The dimensions of COCO's ``bbob-largescale`` suite."""

MAX_BLOCK_SIZE = 40
"""COCO's block size is ``min(D, 40)``."""

MAX_LARGESCALE_DIMENSION = 640


def block_sizes(dimension: int) -> tuple[int, ...]:
    """COCO's ``coco_get_block_sizes``: blocks of ``min(D, 40)``, the last one taking the rest."""
    size = min(int(dimension), MAX_BLOCK_SIZE)
    n = -(-int(dimension) // size)
    return (size,) * (n - 1) + (int(dimension) - (n - 1) * size,)


@functools.lru_cache(maxsize=256)
def _block_rotation_cached(seed: int, dimension: int) -> np.ndarray:
    sizes = block_sizes(dimension)
    size = sizes[0]
    out = np.zeros((len(sizes), size, size))
    for k, s in enumerate(sizes):
        out[k] = np.eye(size)
        out[k, :s, :s] = coco_rng.rotation(seed + 1000000 * k, s)
    out.setflags(write=False)
    return out


def block_rotation(seed: int, dimension: int) -> np.ndarray:
    """COCO's ``coco_compute_blockrotation`` as ``(blocks, size, size)``; a short last block is padded with 1s."""
    return _block_rotation_cached(int(seed), int(dimension)).copy()


@functools.lru_cache(maxsize=1024)
def _swap_permutation_cached(seed: int, n: int) -> tuple[int, ...]:
    if n <= 40:
        return tuple(range(n))
    swap_range = n // 3
    perm = list(range(n))
    order = np.argsort(coco_rng.unif(n, seed), kind="stable")  # qsort of distinct values
    for j in range(n):  # COCO makes n swaps
        first = int(order[j])
        lower = 0 if first < swap_range else first - swap_range
        upper = n - 1 if first + swap_range > n - 1 else first + swap_range
        u = coco_rng.unif(1, seed + (1 + j) * 1000)[0]
        second = int(u * (upper - 1 - lower + 1)) + lower  # C's (long) truncation, u > 0
        if second >= first:
            second += 1
        perm[first], perm[second] = perm[second], perm[first]
    return tuple(perm)


def swap_permutation(seed: int, dimension: int) -> np.ndarray:
    """COCO's ``coco_compute_truncated_uniform_swap_permutation(P, seed, D, D, D // 3)`` (identity for D <= 40)."""
    return np.array(_swap_permutation_cached(int(seed), int(dimension)), dtype=np.int32)


class LargeScaleInstance(NamedTuple):
    """One ``bbob-largescale`` problem as a pytree of arrays (same fields for all 24 functions).

    Attributes:
        fid, iid: function and instance ids (int32 scalars).
        fopt: optimal value ``()``.
        xopt: optimum ``(D,)``.
        r_in, r_out: permutations around the first block rotation, int32 ``(D,)``.
        r_blocks: its blocks ``(nb, s, s)``.
        q_in, q_out, q_blocks: the second permuted block rotation.
        sign: +-1 vector ``(D,)`` (f20, f24).
        peaks, peak_scales, peak_values: Gallagher's peaks (f21, f22) as in the ``bbob`` instances.
    """

    fid: np.ndarray
    iid: np.ndarray
    fopt: np.ndarray
    xopt: np.ndarray
    r_in: np.ndarray
    r_blocks: np.ndarray
    r_out: np.ndarray
    q_in: np.ndarray
    q_blocks: np.ndarray
    q_out: np.ndarray
    sign: np.ndarray
    peaks: np.ndarray
    peak_scales: np.ndarray
    peak_values: np.ndarray

    @property
    def dimension(self) -> int:
        """The search-space dimension ``D``."""
        return int(np.shape(self.xopt)[-1])


def _apply_blocks_np(blocks: np.ndarray, v: np.ndarray) -> np.ndarray:
    d = v.shape[-1]
    nb, s, _ = blocks.shape
    vp = np.concatenate([v, np.zeros(v.shape[:-1] + (nb * s - d,))], axis=-1).reshape(v.shape[:-1] + (nb, s))
    return np.einsum("kij,...kj->...ki", blocks, vp).reshape(v.shape[:-1] + (nb * s,))[..., :d]


# (r_in, r_out, q_in, q_out): the permutations' seeds, rseed + k * 1000000, as each COCO function numbers them
# (0: no second rotation). r is the rotation applied first for single-rotation functions and the one
# drawn with rseed + 1000000 otherwise (f9, f19: rseed); q is drawn with rseed.
_PERM_SEEDS: dict[int, tuple[int, int, int, int]] = {
    6: (4, 5, 2, 3),  # x -> P11(2) B2 P12(3) -> cond -> P21(4) B1 P22(5)
    7: (4, 5, 2, 3),  # the same, with the rounding between
    9: (2, 3, 0, 0),
    10: (2, 3, 0, 0),
    11: (2, 3, 0, 0),
    12: (2, 3, 0, 0),
    13: (3, 4, 5, 6),  # x -> P12(5) B2 P22(6) -> cond -> P11(3) B1 P21(4)
    14: (2, 3, 0, 0),
    15: (3, 4, 5, 6),  # x -> P11(3) B1 P12(4) -> osz, asy -> P21(5) B2 P22(6) -> cond -> P11 B1 P12
    16: (5, 6, 3, 4),  # x -> P12(5) B1 P22(6) -> osz -> P11(3) B2 P21(4) -> cond -> P12 B1 P22
    17: (5, 6, 3, 4),  # x -> P12(5) B1 P22(6) -> asy -> P11(3) B2 P21(4) -> cond
    18: (5, 6, 3, 4),
    19: (2, 3, 0, 0),
    23: (5, 6, 3, 4),  # x -> P11(3) B2 P12(4) -> cond -> P21(5) B1 P22(6)
    24: (5, 6, 3, 4),  # the same, on 2 sign(x) x - mu0
}
_ROTATED_R = frozenset(_PERM_SEEDS)
_ROTATED_Q = frozenset(f for f, s in _PERM_SEEDS.items() if s[2])
_R_SEED_RSEED = frozenset((9, 19))  # r's blocks drawn with rseed (no + 1e6)
_NORM_BY_DIM = frozenset((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 24))


def norm_factor(dimension: int) -> float:
    """COCO's ``transform_obj_norm_by_dim``: ``min(1, 40 / D)``."""
    return min(1.0, 40.0 / float(dimension))


def validate_largescale(function: object, instance: object, dimension: object) -> tuple[int, int, int]:
    """Checks a ``bbob-largescale`` (function, instance, dimension) triple and returns it as ints."""
    for name, value in (("function", function), ("instance", instance), ("dimension", dimension)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"bbob-largescale {name} id must be an integer, got {value!r} ({type(value).__name__}).")
    f, i, d = int(function), int(instance), int(dimension)
    if f not in FUNCTION_IDS:
        raise ValueError(f"Unknown bbob-largescale function id {f}: the suite has functions 1..24.")
    if not 1 <= i <= 99999:
        raise ValueError(
            f"Invalid bbob-largescale instance id {i}: use a positive integer below 100000 (COCO uses 1-15)."
        )
    if not 2 <= d <= MAX_LARGESCALE_DIMENSION:
        raise ValueError(
            f"Unsupported bbob-largescale dimension {d}: use 2..{MAX_LARGESCALE_DIMENSION} "
            f"(COCO's suite uses {', '.join(map(str, LARGESCALE_DIMENSIONS))})."
        )
    return f, i, d


def make_largescale_instance(function: int, instance: int, dimension: int) -> LargeScaleInstance:
    """Builds the data of ``bbob-largescale`` function ``function``, instance ``instance``, in ``dimension``-D.

    Raises:
        ValueError: for an unknown function, instance or dimension.
    """
    f, inst, d = validate_largescale(function, instance, dimension)
    rseed = {4: 3, 18: 17}.get(f, f) + 10000 * inst
    sizes = block_sizes(d)
    eye_blocks = np.broadcast_to(np.eye(sizes[0]), (len(sizes), sizes[0], sizes[0]))
    ident = np.arange(d, dtype=np.int32)
    fields: dict[str, np.ndarray] = {
        "xopt": np.zeros(d),
        "r_in": ident,
        "r_blocks": eye_blocks,
        "r_out": ident,
        "q_in": ident,
        "q_blocks": eye_blocks,
        "q_out": ident,
        "sign": np.ones(d),
        "peaks": np.zeros((MAX_PEAKS, d)),
        "peak_scales": np.ones((MAX_PEAKS, d)),
        "peak_values": np.zeros(MAX_PEAKS),
    }
    if f not in (9, 19, 20, 21, 22, 24):
        fields["xopt"] = coco_rng.xopt(rseed + (1000000 if f == 12 else 0), d)
    if f == 4:
        x = fields["xopt"].copy()
        x[0::2] = np.abs(x[0::2])
        fields["xopt"] = x
    elif f == 5:
        fields["xopt"] = np.where(fields["xopt"] < 0.0, -5.0, 5.0)
    elif f == 8:
        fields["xopt"] = 0.75 * fields["xopt"]
    if f in _ROTATED_R:
        ri, ro, qi, qo = _PERM_SEEDS[f]
        fields["r_blocks"] = block_rotation(rseed if f in _R_SEED_RSEED else rseed + 1000000, d)
        fields["r_in"] = swap_permutation(rseed + ri * 1000000, d)
        fields["r_out"] = swap_permutation(rseed + ro * 1000000, d)
        if f in _ROTATED_Q:
            fields["q_blocks"] = block_rotation(rseed, d)
            fields["q_in"] = swap_permutation(rseed + qi * 1000000, d)
            fields["q_out"] = swap_permutation(rseed + qo * 1000000, d)
    if f == 9:
        fields["xopt"] = 0.75 * coco_rng.xopt(rseed, d)
    elif f == 19:
        # COCO: xopt = A^T 1 / 2 with A = P_out B P_in (scale max(1, sqrt(40) / 8) = 1)
        # B^T 1 (P_out^T 1 = 1): column sums, added row by row as COCO adds them
        bt1 = np.cumsum(fields["r_blocks"], axis=1)[:, -1, :].reshape(-1)[:d]
        x = np.empty(d)
        x[fields["r_in"]] = bt1 / 2.0
        fields["xopt"] = x
    elif f == 20:
        sign = np.where(coco_rng.unif(d, rseed) < 0.5, -1.0, 1.0)
        fields["sign"] = sign
        fields["xopt"] = sign * 0.5 * 4.2096874637
    elif f in (21, 22):
        n_peaks = 101 if f == 21 else 21
        b, c = (10.0, 5.0) if f == 21 else (9.8, 4.9)
        blocks = block_rotation(rseed, d)
        fields["r_blocks"] = blocks
        u = coco_rng.unif(n_peaks - 1, rseed)
        order = np.argsort(u, kind="stable")
        cond = np.empty(n_peaks)
        cond[0] = math.sqrt(1000.0) if f == 21 else 1000.0
        cond[1:] = coco_rng.cpow(1000.0, order / (n_peaks - 2.0))
        heights = np.empty(n_peaks)
        heights[0] = 10.0
        heights[1:] = 1.1 + 8.0 * np.arange(n_peaks - 1) / (n_peaks - 2.0)
        scales = np.empty((n_peaks, d))
        for i in range(n_peaks):
            perm = np.argsort(coco_rng.unif(d, rseed + 1000 * i), kind="stable")
            scales[i] = coco_rng.cpow(cond[i], perm / (d - 1.0) - 0.5)
        local = b * coco_rng.unif(d * n_peaks, rseed).reshape(n_peaks, d) - c
        local[0] *= 0.8
        pad = MAX_PEAKS - n_peaks
        fields["peaks"] = np.concatenate([_apply_blocks_np(blocks, local), np.zeros((pad, d))])
        fields["peak_scales"] = np.concatenate([scales, np.ones((pad, d))])
        fields["peak_values"] = np.concatenate([heights, np.zeros(pad)])
        fields["xopt"] = local[0]
    elif f == 24:
        sign = np.where(coco_rng.gauss(d, rseed) < 0.0, -1.0, 1.0)
        fields["sign"] = sign
        fields["xopt"] = 1.25 * sign
    ints = ("r_in", "r_out", "q_in", "q_out")
    return LargeScaleInstance(
        fid=np.asarray(f, dtype=np.int32),
        iid=np.asarray(inst, dtype=np.int32),
        fopt=np.asarray(coco_rng.fopt(f, inst), dtype=np.float64),
        **{k: np.asarray(v, dtype=np.int32 if k in ints else np.float64) for k, v in fields.items()},
    )


def _blocks(blocks: jax.Array, v: jax.Array) -> jax.Array:
    """``B v`` for block-diagonal ``B`` stored as ``(blocks, s, s)``: one batched matrix-vector product."""
    d = v.shape[-1]
    nb, s, _ = blocks.shape
    vp = jnp.pad(v, (0, nb * s - d)).reshape(nb, s)
    return jnp.einsum("kij,kj->ki", blocks, vp).reshape(nb * s)[:d]


def apply_rotation(p_in: jax.Array, blocks: jax.Array, p_out: jax.Array, v: jax.Array) -> jax.Array:
    """``P_out B P_in v`` for one point ``v`` of shape ``(D,)`` (``(P v)_i = v_{P[i]}``)."""
    return jax.lax.optimization_barrier(_blocks(blocks, v[p_in])[p_out])


def _r(p: LargeScaleInstance, v: jax.Array) -> jax.Array:
    return apply_rotation(p.r_in, p.r_blocks, p.r_out, v)


def _q(p: LargeScaleInstance, v: jax.Array) -> jax.Array:
    return apply_rotation(p.q_in, p.q_blocks, p.q_out, v)


@functools.lru_cache(maxsize=64)
def _cond_factors(alpha: float, d: int) -> np.ndarray:
    i = np.arange(d, dtype=np.float64)
    return coco_rng.cpow(alpha, 0.5 * i / (d - 1.0))  # C's pow, in COCO's order of operations


def _cond(alpha: float, v: jax.Array) -> jax.Array:
    """COCO's ``transform_vars_conditioning``: ``alpha^(0.5 i / (D - 1)) v_i`` (factors computed by NumPy)."""
    return jnp.asarray(_cond_factors(float(alpha), v.shape[-1]), v.dtype) * v


def _n_special(d: int) -> int:
    """``ceil(D / 40)``: the long / short / linear axes of the generalised bent cigar, discus, sharp ridge."""
    return -(-d // 40)


def _ls6(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    z = _r(p, _cond(10.0, _q(p, x - p.xopt)))
    w = jnp.where(z * p.xopt > 0, 1e4, 1.0)
    y = _fn.tosz(norm_factor(x.shape[-1]) * jnp.sum(w * z * z))
    return y**0.9


def _ls7(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    zhat = _cond(10.0, _q(p, x - p.xopt))
    ztil = jnp.where(jnp.abs(zhat) > 0.5, _fn._round(zhat), _fn._round(10.0 * zhat) / 10.0)
    z = _r(p, ztil)
    core = jnp.sum(100.0 ** _fn._ramp(d, x.dtype) * z * z)
    return norm_factor(d) * 0.1 * jnp.maximum(jnp.abs(zhat[0]) * d * 1e-4, core) + _fn.penalty(x)


def _ls8(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    return _fn._rosenbrock(x - p.xopt + 1.0)  # factor max(1, sqrt(min(D, 40)) / 8) = 1


def _ls9(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    return _fn._rosenbrock(_r(p, x - p.xopt) + 1.0)


def _ls10(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    return _fn._ellipsoid(_fn.tosz(_r(p, x - p.xopt)), 1e6)


def _ls11(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    z = _fn.tosz(_r(p, x - p.xopt))
    k = jnp.arange(x.shape[-1]) < _n_special(x.shape[-1])
    return jnp.sum(jnp.where(k, 1e6, 1.0) * z * z)


def _ls12(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    z = _r(p, _fn.tasy(_r(p, x - p.xopt), 0.5))
    k = jnp.arange(x.shape[-1]) < _n_special(x.shape[-1])
    return jnp.sum(jnp.where(k, 1.0, 1e6) * z * z)


def _ls13(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    z = _r(p, _cond(10.0, _q(p, x - p.xopt)))
    k = jnp.arange(x.shape[-1]) < _n_special(x.shape[-1])
    return jnp.sum(jnp.where(k, z * z, 0.0)) + 100.0 * jnp.sqrt(jnp.sum(jnp.where(k, 0.0, z * z)))


def _ls14(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    z = _r(p, x - p.xopt)
    expo = 2.0 + 4.0 * _fn._ramp(x.shape[-1], x.dtype)
    return jnp.sqrt(jnp.sum(jnp.abs(z) ** expo))


def _ls15(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    z = _r(p, _cond(10.0, _q(p, _fn.tasy(_fn.tosz(_r(p, x - p.xopt)), 0.2))))
    return _fn._rastrigin(z)


def _ls16(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    z = _r(p, _cond(0.01, _q(p, _fn.tosz(_r(p, x - p.xopt)))))
    k = jnp.arange(_fn._WEIERSTRASS_K, dtype=x.dtype)
    ak = 0.5**k
    bk = 3.0**k
    f0 = jnp.sum(ak * jnp.cos(math.pi * bk))
    terms = jnp.cos(2.0 * math.pi * bk[:, None] * (z[None, :] + 0.5)) * ak[:, None]
    s = jnp.sum(terms) / d - f0
    return 10.0 * s**3 + 10.0 / d * _fn.penalty(x)


def _ls_schaffers(p: LargeScaleInstance, x: jax.Array, cond: float) -> jax.Array:
    d = x.shape[-1]
    z = _cond(cond, _q(p, _fn.tasy(_r(p, x - p.xopt), 0.5)))
    s = z[:-1] * z[:-1] + z[1:] * z[1:]
    total = jnp.sum(s**0.25 * (1.0 + jnp.sin(50.0 * s**0.1) ** 2))
    return (total / (d - 1.0)) ** 2 + 10.0 * _fn.penalty(x)


def _ls19(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    z = _r(p, x) + 0.5
    c1 = z[:-1] * z[:-1] - z[1:]
    c2 = 1.0 - z[:-1]
    t = 100.0 * c1 * c1 + c2 * c2
    return 10.0 + 10.0 * jnp.sum(t / 4000.0 - jnp.cos(t)) / (d - 1.0)


def _ls21(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    y = jax.lax.optimization_barrier(_blocks(p.r_blocks, x))
    diff = y[:, None] - p.peaks.T
    dist = jnp.sum(p.peak_scales.T * diff * diff, axis=0)
    heights = p.peak_values * jnp.exp((-0.5 / d) * dist)
    t = _fn.tosz(10.0 - jnp.maximum(jnp.max(heights), 0.0))
    return t * t + _fn.penalty(x)


def _ls23(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    z = _r(p, _cond(100.0, _q(p, x - p.xopt)))
    pw = 2.0 ** jnp.arange(1, 33, dtype=x.dtype)
    v = pw[:, None] * z[None, :]
    inner = jnp.sum(jnp.abs(v - _fn._round(v)) / pw[:, None], axis=0)
    factors = (1.0 + jnp.arange(1, d + 1, dtype=x.dtype) * inner) ** (10.0 / d**1.2)
    return 10.0 / d / d * (jnp.prod(factors) - 1.0) + _fn.penalty(x)


def _ls24(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    mu0 = 2.5
    s = 1.0 - 0.5 / (math.sqrt(d + 20.0) - 4.1)
    mu1 = -math.sqrt((mu0 * mu0 - 1.0) / s)
    xhat = 2.0 * p.sign * x
    z = _r(p, _cond(100.0, _q(p, xhat - mu0)))
    sum1 = jnp.sum((xhat - mu0) ** 2)
    sum2 = jnp.sum((xhat - mu1) ** 2)
    core = 10.0 * (d - jnp.sum(jnp.cos(2.0 * math.pi * z))) + jnp.minimum(sum1, d + s * sum2)
    return norm_factor(d) * core + 1e4 * _fn.penalty(x)


def _ls4(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    # Bueche-Rastrigin: the penalty is added after the normalisation (not scaled)
    d = x.shape[-1]
    z = _fn.tosz(x - p.xopt)
    factor = 10.0 ** (0.5 * _fn._ramp(d, x.dtype))
    factor = jnp.where((z > 0) & (jnp.arange(d) % 2 == 0), 10.0 * factor, factor)
    return norm_factor(d) * _fn._rastrigin(factor * z) + 100.0 * _fn.penalty(x)


def _normed(g):
    def h(p: LargeScaleInstance, x: jax.Array) -> jax.Array:
        return norm_factor(x.shape[-1]) * g(p, x)

    return h


_RAW = {
    1: _fn._f1,
    2: _fn._f2,
    3: _fn._f3,
    5: _fn._f5,
    8: _ls8,
    9: _ls9,
    10: _ls10,
    11: _ls11,
    12: _ls12,
    13: _ls13,
    14: _ls14,
    15: _ls15,
}

LS_BRANCHES = {f: _normed(g) for f, g in _RAW.items()}
LS_BRANCHES.update(
    {
        4: _ls4,
        6: _ls6,
        7: _ls7,
        16: _ls16,
        17: functools.partial(_ls_schaffers, cond=10.0),
        18: functools.partial(_ls_schaffers, cond=1000.0),
        19: _ls19,
        20: _fn._f20,
        21: _ls21,
        22: _ls21,
        23: _ls23,
        24: _ls24,
    }
)
"""``LS_BRANCHES[f](instance, x) -> f(x) - fopt`` for one point of a ``bbob-largescale`` problem."""


def largescale_delta(fid: int, p: LargeScaleInstance, x: jax.Array) -> jax.Array:
    """``f(x) - fopt`` of ``bbob-largescale`` function ``fid`` (known at trace time) at one point ``x``."""
    dtype = jnp.result_type(x, jnp.float32)
    p = jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, p)
    return LS_BRANCHES[int(fid)](p, x)
