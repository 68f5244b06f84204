"""Input checks of the strategy factories, ``init`` and ``tell``: one clear error per bad input.

``cfg`` below is a :class:`eggroll.strategies._core.Config`.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eggroll import noise as nz
from eggroll.population import LowRankPopulation


def as_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as a Python int (NumPy and JAX integer scalars accepted), at least ``minimum``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        ok = jnp.issubdtype(value.dtype, jnp.integer)
    if not ok or int(value) < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return int(value)


def check_sigma(sigma: Any, name: str = "sigma_init") -> None:
    """Refuse a concrete sigma that is not a finite positive number (0 would divide the update by zero)."""
    if isinstance(sigma, jax.core.Tracer):
        return  # traced (jit / vmap): tell skips a non-finite update instead
    values = np.asarray(sigma, dtype=np.float64)
    if values.ndim:
        raise ValueError(
            f"{name} must be one number (every leaf shares it), got an array of shape {values.shape}; to sweep "
            "several, vmap init / ask / tell over params."
        )
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"{name} must be a finite number > 0 (the update divides by sigma), got {sigma!r}.")


def check_key(key: Any) -> None:
    """Refuse what is not a PRNG key (a typed ``jax.random.key`` or a raw ``uint32[2]`` ``PRNGKey``)."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and (jnp.issubdtype(dtype, jax.dtypes.prng_key) or (dtype == jnp.uint32 and shape == (2,))):
        return
    raise ValueError(f"key must be a PRNG key such as jax.random.key(0), got {key!r}.")


def warn_rank_clipped(specs: tuple, rank: int) -> None:
    """Say once, at construction, which matrix leaves are too small for ``rank`` (they use their own maximum)."""
    small = [s for s in specs if s.kind == "lowrank" and nz.leaf_rank(s, rank) < rank]
    if small:
        shown = ", ".join(
            f"{jax.tree_util.keystr(s.path) or 'root'} {s.shape} -> {nz.leaf_rank(s, rank)}" for s in small
        )
        warnings.warn(
            f"rank={rank} exceeds the smaller side of {len(small)} matrix leaf/leaves; each uses rank "
            f"min(rows, cols) instead (a larger A B^T has no higher rank, only more cost): {shown}.",
            UserWarning,
            stacklevel=4,
        )


def check_mean(cfg: Any, mean: Any) -> list[jax.Array]:
    """Leaves of ``mean`` cast to the template's dtypes; clear error on mismatch.

    A floating value for an integer or boolean leaf is refused rather than truncated.
    """
    leaves, treedef = jax.tree.flatten(mean)
    if treedef != cfg.treedef:
        raise ValueError(
            "The mean passed to init does not have the structure of the `solution` template given to the "
            f"factory.\n  template: {cfg.treedef}\n  mean:     {treedef}"
        )
    out = []
    for spec, leaf in zip(cfg.specs, leaves, strict=True):
        leaf = jnp.asarray(leaf)
        if leaf.shape != spec.shape:
            raise ValueError(
                f"Leaf {jax.tree_util.keystr(spec.path)} has shape {leaf.shape} in the mean but "
                f"{spec.shape} in the solution template."
            )
        if jnp.issubdtype(leaf.dtype, jnp.inexact) and not jnp.issubdtype(spec.dtype, jnp.inexact):
            raise ValueError(
                f"Leaf {jax.tree_util.keystr(spec.path)} is {jnp.dtype(spec.dtype).name} in the solution template "
                f"but {leaf.dtype} in the mean; casting would truncate it: pass {jnp.dtype(spec.dtype).name} values."
            )
        out.append(leaf.astype(spec.dtype))
    return out


def check_fitness(cfg: Any, fitness: jax.Array) -> jax.Array:
    fitness = jnp.asarray(fitness)
    if fitness.shape != (cfg.population_size,):
        hint = " (did you return one value per rollout or per token instead of per member?)"
        raise ValueError(
            f"fitness must have shape ({cfg.population_size},), one scalar per member, "
            f"got {fitness.shape}{hint if fitness.ndim > 1 else ''}."
        )
    if not jnp.issubdtype(fitness.dtype, jnp.number) or jnp.issubdtype(fitness.dtype, jnp.complexfloating):
        raise ValueError(f"fitness must be real numbers, got dtype {fitness.dtype} (take .real or abs() first?).")
    return fitness.astype(jnp.float32)


def read_population(cfg: Any, population: Any) -> Any:
    """``None`` for a population ``tell`` regenerates (low-rank or ``None``), else the stacked leaves, checked."""
    if population is None or isinstance(population, LowRankPopulation):
        return None
    leaves, treedef = jax.tree.flatten(population)
    if treedef != cfg.treedef:
        raise ValueError(
            "tell got a population that is neither what ask returned nor a stacked pytree of the solution's "
            f"structure.\n  solution:   {cfg.treedef}\n  population: {treedef}"
        )
    for spec, leaf in zip(cfg.specs, leaves, strict=True):
        want = (cfg.population_size, *spec.shape)
        if tuple(jnp.shape(leaf)) != want:
            raise ValueError(
                f"Leaf {jax.tree_util.keystr(spec.path)} of the population passed to tell has shape "
                f"{tuple(jnp.shape(leaf))}; a stacked population has shape {want} (members first)."
            )
    return leaves
