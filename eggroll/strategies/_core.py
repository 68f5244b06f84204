"""What OpenAI-ES and EGGROLL share: params, state, validation, the update.

Both strategies estimate ``g = 1 / (N sigma) * sum_i w_i eps_i`` from shaped
fitness ``w`` and unit noise ``eps_i`` regenerated from counters (see
:mod:`eggroll.noise`), add L2 weight decay, and hand ``g`` to an optax
optimizer. They differ only in the noise of matrix leaves (full Gaussian vs
``A B^T / sqrt(r)``) and in what ``ask`` returns; those parts are passed in as
functions by the two factories.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from eggroll import noise as nz
from eggroll import shaping
from eggroll.types import Strategy


@struct.dataclass
class Params:
    """Traceable hyperparameters (vmap over them to sweep in one compiled call).

    Attributes:
        sigma_init: initial perturbation scale.
        sigma_decay: multiplicative decay of sigma per generation.
        sigma_limit: sigma never decays below this.
        lr_scale: multiplies the optimizer's update (1.0 = the optimizer's own rate).
        weight_decay: L2 coefficient added to the gradient estimate (trainable leaves only).
    """

    sigma_init: float = 0.05
    sigma_decay: float = 1.0
    sigma_limit: float = 0.0
    lr_scale: float = 1.0
    weight_decay: float = 0.0


@struct.dataclass
class State:
    """Strategy state (a pytree; safe to checkpoint, scan and vmap).

    Attributes:
        mean: current mean, same pytree and dtypes as the solution.
        opt_state: the optax state over the trainable leaves.
        sigma: current perturbation scale.
        key: base key of all noise of this run (set by ``init``).
        best_solution: best member seen so far (dense), in the solution's pytree
            (``None`` when the strategy was built with ``track_best=False``).
        best_fitness: its fitness, in the user's sign.
        generation_counter: number of completed ``tell`` calls.
    """

    mean: Any
    opt_state: Any
    sigma: jax.Array
    key: jax.Array
    best_solution: Any
    best_fitness: jax.Array
    generation_counter: jax.Array


class Config(struct.PyTreeNode):
    """Static settings closed over by a strategy (not traced)."""

    population_size: int = struct.field(pytree_node=False)
    specs: tuple = struct.field(pytree_node=False)
    treedef: Any = struct.field(pytree_node=False)
    optimizer: Any = struct.field(pytree_node=False)
    antithetic: bool = struct.field(pytree_node=False)
    noise_reuse: int = struct.field(pytree_node=False)
    maximize: bool = struct.field(pytree_node=False)
    shaper: Callable = struct.field(pytree_node=False)
    rank: int = struct.field(pytree_node=False)
    noise: str = struct.field(pytree_node=False, default="hash")
    track_best: bool = struct.field(pytree_node=False, default=True)

    @property
    def num_noise(self) -> int:
        return self.population_size // 2 if self.antithetic else self.population_size

    @property
    def trainable(self) -> list[int]:
        return [i for i, s in enumerate(self.specs) if s.kind != "frozen"]


def make_config(
    *,
    population_size: int,
    solution: Any,
    optimizer: optax.GradientTransformation,
    antithetic: bool,
    noise_reuse: int,
    maximize: bool,
    fitness_shaping: str | Callable,
    group_size: int | None,
    rank: int,
    lowrank: Any,
    trainable: Any,
    noise: str = "hash",
    track_best: bool = True,
) -> Config:
    """Validate the factory arguments and freeze them into a :class:`Config`."""
    if not isinstance(population_size, int) or population_size < 1:
        raise ValueError(f"population_size must be a positive int, got {population_size!r}.")
    if antithetic and population_size % 2:
        raise ValueError(
            f"population_size={population_size} is odd but antithetic=True pairs members (2k, 2k+1). "
            f"Use an even size such as {population_size + 1}, or antithetic=False."
        )
    if not isinstance(noise_reuse, int) or noise_reuse < 1:
        raise ValueError(
            f"noise_reuse must be an int >= 1 (generations that share one draw of noise), got {noise_reuse!r}."
        )
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}.")
    if group_size is not None:
        if group_size < 1 or population_size % group_size:
            raise ValueError(f"group_size={group_size} must divide population_size={population_size}.")
        if antithetic and group_size % 2:
            raise ValueError(f"group_size={group_size} must be even so antithetic pairs share a group.")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}.")
    if noise not in ("hash", "threefry"):
        raise ValueError(f"noise must be 'hash' or 'threefry', got {noise!r}.")
    specs = tuple(nz.leaf_specs(solution, lowrank=lowrank, trainable=trainable))
    return Config(
        population_size=population_size,
        specs=specs,
        treedef=jax.tree.structure(solution),
        optimizer=optimizer,
        antithetic=antithetic,
        noise_reuse=noise_reuse,
        maximize=maximize,
        shaper=shaping.resolve(fitness_shaping, group_size),
        rank=rank,
        noise=noise,
        track_best=track_best,
    )


def check_mean(cfg: Config, mean: Any) -> list[jax.Array]:
    """Leaves of ``mean`` cast to the template's dtypes; clear error on mismatch."""
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
        out.append(leaf.astype(spec.dtype))
    return out


def pair_noise(cfg: Config, key, generation, pairs) -> list:
    """Unit noise of every leaf for the given noise indices (leading axis = pair)."""
    fn = lambda p: nz.member_noise(key, list(cfg.specs), generation, cfg.noise_reuse, p, cfg.rank, cfg.noise)
    return jax.vmap(fn)(pairs)


def leaf_direction(spec, noise, rank: int) -> jax.Array:
    """The unit perturbation of one leaf for one noise index (dense)."""
    if spec.kind == "lowrank":
        a, b = noise
        return (a @ b.T) / math.sqrt(rank)
    return noise


def init(cfg: Config, key: jax.Array, mean: Any, params: Params) -> State:
    leaves = check_mean(cfg, mean)
    train = [leaves[i].astype(jnp.float32) for i in cfg.trainable]
    mean = jax.tree.unflatten(cfg.treedef, leaves)
    return State(
        mean=mean,
        opt_state=cfg.optimizer.init(train),
        sigma=jnp.asarray(params.sigma_init, jnp.float32),
        key=key,
        best_solution=mean if cfg.track_best else None,
        best_fitness=jnp.asarray(-jnp.inf if cfg.maximize else jnp.inf, jnp.float32),
        generation_counter=jnp.zeros((), jnp.int32),
    )


def check_fitness(cfg: Config, fitness: jax.Array) -> jax.Array:
    fitness = jnp.asarray(fitness)
    if fitness.shape != (cfg.population_size,):
        hint = " (did you return one value per rollout or per token instead of per member?)"
        raise ValueError(
            f"fitness must have shape ({cfg.population_size},), one scalar per member, "
            f"got {fitness.shape}{hint if fitness.ndim > 1 else ''}."
        )
    if not jnp.issubdtype(fitness.dtype, jnp.number):
        raise ValueError(f"fitness must be numeric, got dtype {fitness.dtype}.")
    return fitness.astype(jnp.float32)


def noise_weights(cfg: Config, fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shaped weights per noise index and the sanitised minimisation-sign fitness."""
    f = -fitness if cfg.maximize else fitness
    any_finite = jnp.any(jnp.isfinite(f))
    f_clean = shaping.sanitize(f)
    w = jnp.where(any_finite, cfg.shaper(f_clean), 0.0).astype(jnp.float32)
    if cfg.antithetic:
        w = w[0::2] - w[1::2]
    return w, f_clean


def member_dense(cfg: Config, state: State, i: jax.Array) -> Any:
    """Dense parameters of member ``i`` of the current generation (one copy)."""
    pair, sign = nz.pair_and_sign(i, cfg.antithetic)
    leaves = jax.tree.leaves(state.mean)
    noise = jax.tree.map(lambda x: x[0], pair_noise(cfg, state.key, state.generation_counter, pair[None]))
    out = []
    for spec, m, n in zip(cfg.specs, leaves, noise, strict=True):
        if spec.kind == "frozen":
            out.append(m)
            continue
        d = leaf_direction(spec, n, cfg.rank)
        out.append((m.astype(jnp.float32) + state.sigma * sign * d).astype(m.dtype))
    return jax.tree.unflatten(cfg.treedef, out)


def gradient(cfg: Config, state: State, w: jax.Array) -> list[jax.Array]:
    """``g = 1 / (N sigma) sum_k w_k eps_k`` per trainable leaf, from regenerated noise.

    For low-rank leaves the sum is taken over the factors, ``(diag(w) A)^T B``
    (one einsum), never over materialised ``A_k B_k^T``.
    """
    pairs = jnp.arange(cfg.num_noise, dtype=jnp.int32)
    denom = cfg.population_size * state.sigma
    all_noise = pair_noise(cfg, state.key, state.generation_counter, pairs)
    grads = []
    for i in cfg.trainable:
        spec, noise = cfg.specs[i], all_noise[i]
        if spec.kind == "lowrank":
            a, b = noise
            g = jnp.einsum("p...r,pcr->...c", a * w.reshape((-1,) + (1,) * (a.ndim - 1)), b)
            g = g / math.sqrt(cfg.rank)
        else:
            g = jnp.tensordot(w, noise, axes=1)
        grads.append(g / denom)
    return grads


def tell(cfg: Config, key, population, fitness, state: State, params: Params):
    del key, population  # everything is regenerated from counters in `state`
    fitness = check_fitness(cfg, fitness)
    w, f_clean = noise_weights(cfg, fitness)

    grads = gradient(cfg, state, w)
    leaves = jax.tree.leaves(state.mean)
    train = [leaves[i].astype(jnp.float32) for i in cfg.trainable]
    grads = [g + params.weight_decay * x for g, x in zip(grads, train, strict=True)]
    updates, opt_state = cfg.optimizer.update(grads, state.opt_state, train)
    new_leaves = list(leaves)
    for j, i in enumerate(cfg.trainable):
        new_leaves[i] = (train[j] + params.lr_scale * updates[j]).astype(leaves[i].dtype)
    new_mean = jax.tree.unflatten(cfg.treedef, new_leaves)

    # Best member of this generation, kept if it beats the best so far.
    best_i = jnp.argmin(f_clean)
    gen_best = fitness[best_i]
    sign = -1.0 if cfg.maximize else 1.0
    improved = jnp.isfinite(gen_best) & (sign * gen_best < sign * state.best_fitness)
    best_solution = None
    if cfg.track_best:
        candidate = member_dense(cfg, state, best_i)
        best_solution = jax.tree.map(lambda c, b: jnp.where(improved, c, b), candidate, state.best_solution)
    best_fitness = jnp.where(improved, gen_best, state.best_fitness)

    finite = jnp.isfinite(fitness)
    n_finite = jnp.where(finite.any(), finite.sum(), jnp.nan)  # no finite value: NaN statistics, not 0.0
    mean_fitness = jnp.where(finite, fitness, 0.0).sum() / n_finite
    update_norm = optax.tree.norm([u * params.lr_scale for u in updates])
    new_state = state.replace(
        mean=new_mean,
        opt_state=opt_state,
        sigma=jnp.maximum(state.sigma * params.sigma_decay, params.sigma_limit),
        best_solution=best_solution,
        best_fitness=best_fitness,
        generation_counter=state.generation_counter + 1,
    )
    metrics = {
        "generation_counter": state.generation_counter,
        "best_fitness": best_fitness,
        "best_solution": best_solution,
        "best_fitness_in_generation": gen_best,
        "mean_fitness": mean_fitness,
        "std_fitness": jnp.sqrt(jnp.where(finite, (fitness - mean_fitness) ** 2, 0.0).sum() / n_finite),
        "num_nonfinite": (~finite).sum(),
        "sigma": state.sigma,
        "update_norm": update_norm,
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics


def build_strategy(
    cfg: Config, ask: Callable, *, name: str, materialize: Callable, sigma_init: float, weight_decay: float
) -> Strategy:
    """Wrap a strategy-specific ``ask`` with the shared, jitted ``init`` and ``tell``."""
    return Strategy(
        init=jax.jit(lambda key, mean, params: init(cfg, key, mean, params)),
        ask=jax.jit(ask),
        tell=jax.jit(lambda key, pop, fit, state, params: tell(cfg, key, pop, fit, state, params)),
        default_params=Params(sigma_init=sigma_init, weight_decay=weight_decay),
        population_size=cfg.population_size,
        name=name,
        get_mean=lambda state: state.mean,
        materialize=materialize,
        antithetic=cfg.antithetic,
    )
