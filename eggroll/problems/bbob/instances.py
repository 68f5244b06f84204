"""Instance data of the 24 noiseless BBOB functions, generated as COCO generates it.

An instance is a :class:`BBOBInstance` NamedTuple of NumPy float64 arrays (a JAX
pytree). Every function uses the same fields with the same shapes for a given
dimension ``D``, so instances of *different* functions stack into one batched
pytree and can be ``vmap``-ed over together. Fields a function does not need are
left as zeros / identity.

Which field means what, per function (``R`` = COCO's rotation drawn with seed
``rseed + 1000000``, ``Q`` = the one drawn with ``rseed``, ``rseed = f + 10000 i``,
except f4 and f18 which use the seeds of f3 and f17):

=====  ===========================================================================
f      fields used
=====  ===========================================================================
1-3    ``xopt``
4      ``xopt`` (even coordinates made positive, as COCO does)
5      ``xopt`` (the corner ``5 sign(xopt_coco)``, the optimum)
6      ``xopt``, ``m = R diag(sqrt(10)^(k/(D-1))) Q``
7      ``xopt``, ``r = R``, ``q = Q``
8      ``xopt`` (already scaled by 0.75)
9      ``r = max(1, sqrt(D)/8) * rotation(rseed)``
10-11  ``xopt``, ``r = R``
12     ``xopt`` (drawn with seed ``rseed + 1000000``), ``r = R``
13     ``xopt``, ``m = R diag(sqrt(10)^(k/(D-1))) Q``
14     ``xopt``, ``r = R``
15     ``xopt``, ``r = R``, ``m = R diag(sqrt(10)^(k/(D-1))) Q``
16     ``xopt``, ``r = R``, ``m = R diag((1/10)^(k/(D-1))) Q``
17-18  ``xopt``, ``r = R``, ``m = diag(sqrt(c)^(k/(D-1))) Q`` (c = 10, 1000)
19     ``r = max(1, sqrt(D)/8) * rotation(rseed)``
20     ``xopt``, ``sign`` (the random sign flip of x-hat)
21-22  ``r = rotation(rseed)``, ``peaks`` (local optima, already rotated),
       ``peak_scales``, ``peak_values`` (padded with zero-height peaks to 101)
23     ``xopt``, ``m = R diag(10^(k/(D-1))) Q``
24     ``xopt`` (``+-1.25``), ``r = R``, ``q = Q``
=====  ===========================================================================

``xopt`` always holds the true optimum (also for f9, f19, f21, f22, f24), so
``f(xopt) == fopt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from eggroll.problems.bbob import coco_rng

__all__ = [
    "BBOBInstance",
    "FUNCTION_IDS",
    "FUNCTION_NAMES",
    "MAX_DIMENSION",
    "MAX_PEAKS",
    "NOISY_BASE",
    "NOISY_FUNCTION_IDS",
    "SUITES",
    "make_instance",
    "stack_instances",
    "validate_ids",
]

MAX_DIMENSION = 40
"""Largest supported dimension (COCO's ``SUITE_BBOB2009_MAX_DIM``)."""

MAX_PEAKS = 101
"""Gallagher f21 has 101 peaks; f22's 21 are padded to this with zero-height peaks."""

FUNCTION_IDS: tuple[int, ...] = tuple(range(1, 25))

NOISY_FUNCTION_IDS: tuple[int, ...] = tuple(range(101, 131))
"""The ``bbob-noisy`` suite's functions 101..130 (see :mod:`eggroll.problems.bbob.noise`)."""

SUITES: tuple[str, ...] = ("bbob", "bbob-noisy", "bbob-largescale", "bbob-mixint")
"""COCO suites whose instances :func:`make_instance` builds (``bbob-largescale``: :mod:`.largescale`,
``bbob-mixint``: :mod:`.mixint`)."""

FUNCTION_NAMES: dict[int, str] = {
    1: "Sphere",
    2: "Separable Ellipsoid",
    3: "Rastrigin",
    4: "Bueche-Rastrigin",
    5: "Linear Slope",
    6: "Attractive Sector",
    7: "Step Ellipsoid",
    8: "Rosenbrock",
    9: "Rotated Rosenbrock",
    10: "Ellipsoid",
    11: "Discus",
    12: "Bent Cigar",
    13: "Sharp Ridge",
    14: "Different Powers",
    15: "Rotated Rastrigin",
    16: "Weierstrass",
    17: "Schaffers F7",
    18: "Schaffers F7 ill-conditioned",
    19: "Griewank-Rosenbrock",
    20: "Schwefel",
    21: "Gallagher 101 peaks",
    22: "Gallagher 21 peaks",
    23: "Katsuura",
    24: "Lunacek bi-Rastrigin",
}

NOISY_BASE: dict[int, int] = {
    **dict.fromkeys((101, 102, 103, 107, 108, 109), 1),
    **dict.fromkeys((104, 105, 106, 110, 111, 112), 8),
    **dict.fromkeys((113, 114, 115), 7),
    **dict.fromkeys((116, 117, 118), 10),
    **dict.fromkeys((119, 120, 121), 14),
    **dict.fromkeys((122, 123, 124), 17),
    **dict.fromkeys((125, 126, 127), 19),
    **dict.fromkeys((128, 129, 130), 21),
}
"""The noiseless function whose instance data (seeds, ``xopt``, rotations, ``fopt``) each ``bbob-noisy``
function 101..130 uses; COCO 2.8.2 draws them with the noiseless function's seed."""


def _noisy_name(f: int) -> str:
    kind = ("Gaussian", "uniform", "Cauchy")[(f - 101) % 3]
    strength = "moderate " if f <= 106 else ""
    return f"{FUNCTION_NAMES[NOISY_BASE[f]].replace(' 101 peaks', '')} with {strength}{kind} noise"


FUNCTION_NAMES.update({f: _noisy_name(f) for f in NOISY_FUNCTION_IDS})


class BBOBInstance(NamedTuple):
    """One BBOB problem (function, instance, dimension) as a pytree of arrays.

    Attributes:
        fid: function id 1..24 (int32 scalar; a leaf, so it may be batched).
        iid: COCO instance id (int32 scalar, informational).
        fopt: optimal f-value, ``()``.
        xopt: location of the optimum, ``(D,)``.
        r: first rotation (see the module table), ``(D, D)``.
        q: second rotation, ``(D, D)``.
        m: a combined linear map, ``(D, D)``.
        sign: a +-1 vector (f20), ``(D,)``.
        peaks: Gallagher local optima in rotated coordinates, ``(101, D)``.
        peak_scales: Gallagher per-peak axis scalings, ``(101, D)``.
        peak_values: Gallagher peak heights (zero for padding), ``(101,)``.
    """

    fid: np.ndarray
    iid: np.ndarray
    fopt: np.ndarray
    xopt: np.ndarray
    r: np.ndarray
    q: np.ndarray
    m: np.ndarray
    sign: np.ndarray
    peaks: np.ndarray
    peak_scales: np.ndarray
    peak_values: np.ndarray

    @property
    def dimension(self) -> int:
        """The search-space dimension ``D``."""
        return int(np.shape(self.xopt)[-1])


def validate_ids(function: object, instance: object, dimension: object, suite: str = "bbob") -> tuple[int, int, int]:
    """Checks a (function, instance, dimension) triple of COCO suite ``suite`` and returns it as ints.

    Raises:
        ValueError: with what was wrong and which values are accepted.
    """
    if suite not in SUITES:
        raise ValueError(f"Unknown COCO suite {suite!r}: use one of {', '.join(SUITES)}.")
    if suite == "bbob-largescale":
        from eggroll.problems.bbob.largescale import validate_largescale

        return validate_largescale(function, instance, dimension)
    if suite == "bbob-mixint":
        from eggroll.problems.bbob.mixint import validate_mixint

        return validate_mixint(function, instance, dimension)
    for name, value in (("function", function), ("instance", instance), ("dimension", dimension)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"BBOB {name} id must be an integer, got {value!r} ({type(value).__name__}).")
    function, instance, dimension = int(function), int(instance), int(dimension)
    if suite == "bbob" and function not in FUNCTION_IDS:
        raise ValueError(
            f"Unknown BBOB function id {function}: the noiseless suite has functions 1..24 "
            "(pass e.g. functions=range(1, 25); 101..130 are suite='bbob-noisy')."
        )
    if suite == "bbob-noisy" and function not in NOISY_FUNCTION_IDS:
        raise ValueError(
            f"Unknown bbob-noisy function id {function}: the noisy suite has functions 101..130 "
            "(pass e.g. functions=range(101, 131))."
        )
    if not 1 <= instance <= 99999:
        raise ValueError(
            f"Invalid BBOB instance id {instance}: use a positive integer below 100000 "
            "(COCO's standard instances are 1-15; recent workshops use 1-5 and 101-110)."
        )
    if not 2 <= dimension <= MAX_DIMENSION:
        raise ValueError(
            f"Unsupported BBOB dimension {dimension}: use 2..{MAX_DIMENSION} "
            f"(COCO's {suite} suite uses 2, 3, 5, 10, 20, 40)."
        )
    return function, instance, dimension


def _scaled_pair(r: np.ndarray, q: np.ndarray, base: float) -> np.ndarray:
    """``R diag(base^(k/(D-1))) Q``, the ``M`` that COCO builds in a triple loop."""
    d = r.shape[0]
    lam = coco_rng.cpow(base, np.arange(d, dtype=np.float64) / (d - 1.0))
    # COCO adds r[i, k] lam[k] q[k, j] over k = 0, 1, ... in turn: a cumulative sum keeps that order
    return np.cumsum((r * lam[None, :])[:, :, None] * q[None, :, :], axis=1)[:, -1, :]


def _gallagher(rseed: int, dim: int, n_peaks: int) -> dict[str, np.ndarray]:
    """Peaks, scalings, heights and optimum of COCO's ``f_gallagher_bbob_problem_allocate``."""
    if n_peaks == 101:
        max_cond1, b, c = math.sqrt(1000.0), 10.0, 5.0
    else:
        max_cond1, b, c = 1000.0, 9.8, 4.9
    rot = coco_rng.rotation(rseed, dim)
    u = coco_rng.unif(n_peaks - 1, rseed)
    order = np.argsort(u, kind="stable")  # qsort of (value, index) pairs; the values are distinct
    cond = np.empty(n_peaks)
    cond[0] = max_cond1
    cond[1:] = coco_rng.cpow(1000.0, order / (n_peaks - 2.0))
    heights = np.empty(n_peaks)
    heights[0] = 10.0
    heights[1:] = np.arange(n_peaks - 1) / (n_peaks - 2.0) * (9.1 - 1.1) + 1.1
    scales = np.empty((n_peaks, dim))
    for i in range(n_peaks):
        perm = np.argsort(coco_rng.unif(dim, rseed + 1000 * i), kind="stable")
        scales[i] = coco_rng.cpow(cond[i], perm / (dim - 1.0) - 0.5)
    u = coco_rng.unif(dim * n_peaks, rseed).reshape(n_peaks, dim)
    local = b * u - c  # (peaks, D), unrotated
    peaks = local @ rot.T  # peak j in rotated coordinates: R @ local[j]
    peaks[0] *= 0.8
    xopt = 0.8 * local[0]
    pad = MAX_PEAKS - n_peaks
    return {
        "r": rot,
        "peaks": np.concatenate([peaks, np.zeros((pad, dim))]),
        "peak_scales": np.concatenate([scales, np.ones((pad, dim))]),
        "peak_values": np.concatenate([heights, np.zeros(pad)]),
        "xopt": xopt,
    }


def make_instance(function: int, instance: int, dimension: int, suite: str = "bbob") -> Any:
    """Builds the data of BBOB function ``function``, instance ``instance``, in ``dimension``-D.

    Args:
        function: 1..24 (``suite="bbob"``) or 101..130 (``suite="bbob-noisy"``: the data of the
            noiseless function :data:`NOISY_BASE` names, with ``fid`` set to ``function``).
        instance: COCO instance id (1, 2, ...; the value, not an index into a suite).
        dimension: 2..40 (``bbob-largescale``: 2..640; ``bbob-mixint``: multiples of 5 in 5..40 and 50..640).
        suite: ``"bbob"``, ``"bbob-noisy"``, ``"bbob-largescale"`` or ``"bbob-mixint"``.

    Returns:
        A :class:`BBOBInstance` of float64 NumPy arrays (int32 for the ids); for ``bbob-largescale`` a
        :class:`~eggroll.problems.bbob.largescale.LargeScaleInstance`, for ``bbob-mixint`` a
        :class:`~eggroll.problems.bbob.mixint.MixintInstance`.

    Raises:
        ValueError: for an unknown function, instance or dimension.
    """
    f, inst, d = validate_ids(function, instance, dimension, suite)
    if suite == "bbob-largescale":
        from eggroll.problems.bbob.largescale import make_largescale_instance

        return make_largescale_instance(f, inst, d)
    if suite == "bbob-mixint":
        from eggroll.problems.bbob.mixint import make_mixint_instance

        return make_mixint_instance(f, inst, d)
    if suite == "bbob-noisy":
        return make_instance(NOISY_BASE[f], inst, d)._replace(fid=np.asarray(f, dtype=np.int32))
    seed_f = {4: 3, 18: 17}.get(f, f)
    rseed = seed_f + 10000 * inst
    eye = np.eye(d)
    fields: dict[str, np.ndarray] = {
        "xopt": np.zeros(d),
        "r": eye,
        "q": eye,
        "m": eye,
        "sign": np.ones(d),
        "peaks": np.zeros((MAX_PEAKS, d)),
        "peak_scales": np.ones((MAX_PEAKS, d)),
        "peak_values": np.zeros(MAX_PEAKS),
    }

    def rot_r() -> np.ndarray:
        return coco_rng.rotation(rseed + 1000000, d)

    def rot_q() -> np.ndarray:
        return coco_rng.rotation(rseed, d)

    if f in (1, 2, 3, 5, 6, 7, 10, 11, 13, 14, 15, 16, 17, 18, 23, 24):
        fields["xopt"] = coco_rng.xopt(rseed, d)
    if f == 5:
        fields["xopt"] = np.where(fields["xopt"] < 0.0, -5.0, 5.0)  # the corner COCO reports as optimum
    elif f == 4:
        x = coco_rng.xopt(rseed, d)
        x[0::2] = np.abs(x[0::2])
        fields["xopt"] = x
    elif f == 6 or f == 13:
        fields["m"] = _scaled_pair(rot_r(), rot_q(), math.sqrt(10.0))
    elif f == 7:
        fields["r"], fields["q"] = rot_r(), rot_q()
    elif f == 8:
        fields["xopt"] = 0.75 * coco_rng.xopt(rseed, d)
    elif f in (9, 19):
        scale = max(1.0, math.sqrt(d) / 8.0)
        rot = coco_rng.rotation(rseed, d)
        fields["r"] = scale * rot
        fields["xopt"] = rot.sum(axis=0) / (2.0 * scale)  # COCO: R^T 1 / (2 scale)
    elif f in (10, 11, 14):
        fields["r"] = rot_r()
    elif f == 12:
        fields["xopt"] = coco_rng.xopt(rseed + 1000000, d)
        fields["r"] = rot_r()
    elif f == 15:
        fields["r"] = rot_r()
        fields["m"] = _scaled_pair(fields["r"], rot_q(), math.sqrt(10.0))
    elif f == 16:
        fields["r"] = rot_r()
        fields["m"] = _scaled_pair(fields["r"], rot_q(), 1.0 / math.sqrt(100.0))
    elif f in (17, 18):
        cond = 10.0 if f == 17 else 1000.0
        lam = coco_rng.cpow(math.sqrt(cond), np.arange(d) / (d - 1.0))
        fields["r"] = rot_r()
        fields["m"] = lam[:, None] * rot_q()
    elif f == 20:
        u = coco_rng.unif(d, rseed)
        sign = np.where(u < 0.5, -1.0, 1.0)
        fields["sign"] = sign
        fields["xopt"] = sign * 0.5 * 4.2096874637
    elif f in (21, 22):
        fields.update(_gallagher(rseed, d, 101 if f == 21 else 21))
    elif f == 23:
        fields["m"] = _scaled_pair(rot_r(), rot_q(), math.sqrt(100.0))
    elif f == 24:
        fields["r"], fields["q"] = rot_r(), rot_q()
        g = coco_rng.gauss(d, rseed)
        fields["xopt"] = np.where(g < 0.0, -1.25, 1.25)
    fopt = coco_rng.fopt(f, inst)
    return BBOBInstance(
        fid=np.asarray(f, dtype=np.int32),
        iid=np.asarray(inst, dtype=np.int32),
        fopt=np.asarray(fopt, dtype=np.float64),
        **{k: np.asarray(v, dtype=np.float64) for k, v in fields.items()},
    )


def stack_instances(instances: Sequence[Any]) -> Any:
    """Stacks instances of one suite and dimension (any functions) along a new leading axis.

    Raises:
        ValueError: if the list is empty or the dimensions differ.
    """
    if not instances:
        raise ValueError("stack_instances() needs at least one BBOBInstance.")
    dims = {inst.dimension for inst in instances}
    if len(dims) != 1:
        raise ValueError(
            f"Cannot stack BBOB instances of different dimensions {sorted(dims)}: build one suite per dimension."
        )
    if len({type(inst) for inst in instances}) != 1:
        raise ValueError("Cannot stack instances of different COCO suites: build one suite per kind.")
    return jax.tree.map(lambda *leaves: np.stack(leaves), *instances)
