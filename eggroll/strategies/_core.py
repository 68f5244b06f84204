"""What OpenAI-ES and EGGROLL share: params, state, validation, the update.

Both strategies estimate ``g = 1 / (N sigma) * sum_i w_i eps_i`` from shaped
fitness ``w`` and unit noise ``eps_i`` regenerated from counters (see
:mod:`eggroll.noise`), add L2 weight decay, and hand ``g`` to an optax
optimizer. They differ only in the noise of matrix leaves (full Gaussian vs
``A B^T / sqrt(r)``) and in what ``ask`` returns; those parts are passed in as
functions by the two factories.

Keys (see docs/concepts.md). ``ask(key, state, params)`` selects the noise of
the generation: at the start of each noise period (every generation unless
``noise_reuse > 1``) it folds a key derived from ``key`` into ``state.key`` and
returns that state; every perturbation of the period is a pure function of
``(state.key, generation // noise_reuse, noise index)``. ``tell`` reads a
stacked (dense) population as evosax does: member ``i``'s perturbation is
``(x_i - mean) / sigma``, so members clipped after ``ask`` are honoured. A
low-rank population is a receipt: ``tell`` takes its noise key and regenerates
the factors from counters (changed factors are not read); ``None`` regenerates
from ``state.key``, which is what the sharded ``tell`` does.
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
from eggroll.population import LowRankPopulation
from eggroll.strategies import _checks
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
        key: noise key of the current generation: ``init``'s key at first; each
            ``ask`` that starts a noise period folds a key derived from its own
            ``key`` into it (so the noise depends on every ask key so far).
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


NOISE_TAG = 0x6E6F6973  # fold_in tag separating the noise key from other uses of ask's key


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
    population_size = _checks.as_int("population_size", population_size, 1)
    if antithetic and population_size % 2:
        raise ValueError(
            f"population_size={population_size} is odd but antithetic=True pairs members (2k, 2k+1). "
            f"Use an even size such as {population_size + 1}, or antithetic=False."
        )
    if population_size == 1 and fitness_shaping in ("centered_rank", "z_score") and group_size is None:
        raise ValueError(
            f"population_size=1 with fitness_shaping={fitness_shaping!r} gives the lone member weight 0, so the "
            "mean would never move; use population_size >= 2 or fitness_shaping='identity'."
        )
    noise_reuse = _checks.as_int("noise_reuse", noise_reuse, 1)  # (generations that share one draw of noise)
    rank = _checks.as_int("rank", rank, 1)
    if group_size is not None:
        group_size = _checks.as_int("group_size", group_size, 1)
        if population_size % group_size:
            raise ValueError(f"group_size={group_size} must divide population_size={population_size}.")
        if antithetic and group_size % 2:
            raise ValueError(f"group_size={group_size} must be even so antithetic pairs share a group.")
        if group_size == 1:
            raise ValueError(
                "group_size=1 centres each member's fitness on itself, so every weight is 0 and the mean would "
                "never move; use group_size >= 2, or leave it out (one group: the whole population)."
            )
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}.")
    if noise not in ("hash", "threefry"):
        raise ValueError(f"noise must be 'hash' or 'threefry', got {noise!r}.")
    specs = tuple(nz.leaf_specs(solution, lowrank=lowrank, trainable=trainable))
    _checks.warn_rank_clipped(specs, rank)
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


def pair_noise(cfg: Config, key, generation, pairs) -> list:
    """Unit noise of every leaf for the given noise indices (leading axis = pair)."""
    fn = lambda p: nz.member_noise(key, list(cfg.specs), generation, cfg.noise_reuse, p, cfg.rank, cfg.noise)
    return jax.vmap(fn)(pairs)


def leaf_direction(spec, noise) -> jax.Array:
    """The unit perturbation of one leaf for one noise index (dense); a low-rank leaf's rank is its factors' width."""
    if spec.kind == "lowrank":
        a, b = noise
        return (a @ b.T) / math.sqrt(a.shape[-1])
    return noise


def ask_state(cfg: Config, key: jax.Array, state: State) -> State:
    """The state ``ask`` returns: at the start of a noise period its noise key folds in one derived from ``key``.

    The new key keeps the impl (and type) of ``state.key``, so the state's structure never changes.
    ``key=None`` folds nothing in: the noise then depends on ``init``'s key and the counters only.
    """
    if key is None:
        return state
    fresh = state.key
    for word in jax.random.key_data(jax.random.fold_in(key, NOISE_TAG)).reshape(-1):
        fresh = jax.random.fold_in(fresh, word)
    if cfg.noise_reuse > 1:
        fresh = jax.lax.select(state.generation_counter % cfg.noise_reuse == 0, fresh, state.key)
    return state.replace(key=fresh)


def init(cfg: Config, key: jax.Array, mean: Any, params: Params) -> State:
    leaves = _checks.check_mean(cfg, mean)
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


def member_weights(cfg: Config, fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shaped weight of every member and the sanitised minimisation-sign fitness."""
    f = -fitness if cfg.maximize else fitness
    any_finite = jnp.any(jnp.isfinite(f))
    f_clean = shaping.sanitize(f)
    return jnp.where(any_finite, cfg.shaper(f_clean), 0.0).astype(jnp.float32), f_clean


def noise_weights(cfg: Config, fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shaped weights per noise index (antithetic pairs: ``w_2k - w_2k+1``) and the sanitised fitness."""
    w, f_clean = member_weights(cfg, fitness)
    return (w[0::2] - w[1::2] if cfg.antithetic else w), f_clean


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
        d = leaf_direction(spec, n)
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
            g = g / math.sqrt(a.shape[-1])
        else:
            g = jnp.tensordot(w, noise, axes=1)
        grads.append(g / denom)
    return grads


def stacked_gradient(cfg: Config, state: State, leaves: list, w: jax.Array) -> list[jax.Array]:
    """evosax's estimate from a stacked population: ``1/(N sigma) sum_i w_i (x_i - mean) / sigma`` per trainable leaf.

    ``w`` holds one weight per member. The directions are the members as they
    were evaluated (clipped ones included), recovered to float32 rounding.
    """
    mean = jax.tree.leaves(state.mean)
    denom = cfg.population_size * state.sigma
    out = []
    for i in cfg.trainable:
        d = (leaves[i].astype(jnp.float32) - mean[i].astype(jnp.float32)[None]) / state.sigma
        out.append(jnp.tensordot(w, d, axes=1) / denom)
    return out


def tell(cfg: Config, key, population, fitness, state: State, params: Params):
    del key  # the noise key is in `state` (set by ask) or in a low-rank population
    if isinstance(population, LowRankPopulation) and population.key is not None:
        state = state.replace(key=population.key)  # the noise this population was drawn from
    stacked = _checks.read_population(cfg, population)
    fitness = _checks.check_fitness(cfg, fitness)
    w_members, f_clean = member_weights(cfg, fitness)
    if stacked is None:
        grads = gradient(cfg, state, w_members[0::2] - w_members[1::2] if cfg.antithetic else w_members)
    else:
        grads = stacked_gradient(cfg, state, stacked, w_members)
    leaves = jax.tree.leaves(state.mean)
    train = [leaves[i].astype(jnp.float32) for i in cfg.trainable]
    grads = [g + params.weight_decay * x for g, x in zip(grads, train, strict=True)]
    updates, opt_state = cfg.optimizer.update(grads, state.opt_state, train)
    stepped = [
        (x + params.lr_scale * u).astype(leaves[i].dtype) for i, x, u in zip(cfg.trainable, train, updates, strict=True)
    ]
    # A step that is not finite (fitness near the float32 limit with identity shaping, sigma 0 given through
    # traced params ...) is skipped: the mean and the optimizer state stay, grad_norm reports the overflow.
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in stepped]))
    opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), opt_state, state.opt_state)
    new_leaves = list(leaves)
    for j, i in enumerate(cfg.trainable):
        new_leaves[i] = jnp.where(ok, stepped[j], leaves[i])
    new_mean = jax.tree.unflatten(cfg.treedef, new_leaves)

    # Best member of this generation, kept if it beats the best so far.
    best_i = jnp.argmin(f_clean)
    gen_best = fitness[best_i]
    sign = -1.0 if cfg.maximize else 1.0
    improved = jnp.isfinite(gen_best) & (sign * gen_best < sign * state.best_fitness)
    best_solution = None
    if cfg.track_best:
        if stacked is None:
            candidate = member_dense(cfg, state, best_i)
        else:  # the member that was evaluated, as evosax keeps it
            candidate = jax.tree.unflatten(
                cfg.treedef, [x[best_i].astype(s.dtype) for x, s in zip(stacked, cfg.specs, strict=True)]
            )
        best_solution = jax.tree.map(lambda c, b: jnp.where(improved, c, b), candidate, state.best_solution)
    best_fitness = jnp.where(improved, gen_best, state.best_fitness)

    finite = jnp.isfinite(fitness)
    n_finite = jnp.where(finite.any(), finite.sum(), jnp.nan)  # no finite value: NaN statistics, not 0.0
    mean_fitness = jnp.where(finite, fitness, 0.0).sum() / n_finite
    update_norm = jnp.where(ok, optax.tree.norm([u * params.lr_scale for u in updates]), 0.0)
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
    cfg: Config,
    make_population: Callable,
    *,
    name: str,
    materialize: Callable,
    sigma_init: float,
    weight_decay: float,
) -> Strategy:
    """Wrap the strategy-specific parts with the shared ``init``, ``ask`` and ``tell``.

    Args:
        cfg: the validated settings.
        make_population: ``state -> population`` that ``ask`` returns.
        name: the strategy's name.
        materialize: ``population -> stacked dense population``.
        sigma_init: default ``params.sigma_init`` (checked: finite, > 0).
        weight_decay: default ``params.weight_decay``.
    """
    _checks.check_sigma(sigma_init)
    jit_init = jax.jit(lambda key, mean, params: init(cfg, key, mean, params))

    def init_fn(key, mean, params):
        _checks.check_key(key)
        _checks.check_sigma(params.sigma_init, "params.sigma_init")
        return jit_init(key, mean, params)

    def ask(key, state, params):
        del params
        state = ask_state(cfg, key, state)
        return make_population(state), state

    return Strategy(
        init=init_fn,
        ask=jax.jit(ask),
        tell=jax.jit(lambda key, pop, fit, state, params: tell(cfg, key, pop, fit, state, params)),
        default_params=Params(sigma_init=sigma_init, weight_decay=weight_decay),
        population_size=cfg.population_size,
        name=name,
        get_mean=lambda state: state.mean,
        materialize=materialize,
        antithetic=cfg.antithetic,
        regenerates=True,
    )
