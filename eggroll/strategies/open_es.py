"""OpenAI-ES (Salimans et al. 2017): full-rank Gaussian ES with an optax optimizer.

References:
    Salimans, Ho, Chen, Sidor, Sutskever. "Evolution Strategies as a Scalable
    Alternative to Reinforcement Learning", arXiv:1703.03864, 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from eggroll.strategies import _core
from eggroll.types import Strategy


def open_es(
    population_size: int,
    solution: Any,
    *,
    optimizer: optax.GradientTransformation | None = None,
    sigma_init: float = 0.05,
    antithetic: bool = True,
    fitness_shaping: str | Callable | None = None,
    group_size: int | None = None,
    maximize: bool = False,
    noise_reuse: int = 1,
    weight_decay: float = 0.0,
    trainable: Any = None,
    noise: str = "hash",
    track_best: bool = True,
) -> Strategy:
    """Build an OpenAI-ES strategy.

    Every floating leaf gets Gaussian noise of its own shape; ``ask`` returns the
    population as a stacked pytree (leading axis = member), as evosax does, so
    ``jax.vmap(fitness_fn)(population)`` scores it. The key given to ``ask``
    selects the noise (see :func:`eggroll.eggroll` and docs/concepts.md).
    ``tell`` reads the population it is given as evosax does: member ``i``'s
    perturbation is ``(x_i - mean) / sigma``, so members changed after ``ask``
    (clipped to bounds, say) are honoured; an unchanged population gives the
    update of the regenerated noise to float32 rounding. ``tell(key, None, ...)``
    regenerates the noise from the state instead (what the sharded ``tell`` does).

    Args:
        population_size: members per generation (even with ``antithetic``).
        solution: a template pytree (dict, Flax variables, NNX state ...).
        optimizer: any optax transformation; default ``optax.adam(0.01)``.
        sigma_init: default initial perturbation scale (``params.sigma_init``).
        antithetic: mirrored pairs ``(+eps, -eps)``.
        fitness_shaping: ``"centered_rank"`` (default), ``"z_score"`` (the default
            with ``group_size``), ``"identity"`` or a callable ``fitness -> weights``.
        group_size: members ``[g*G, (g+1)*G)`` share an input (a prompt, say); their
            fitness is centred per group and divided by the pooled within-group std
            (``"z_score"``; as in :func:`eggroll.eggroll`).
        maximize: fitness is a reward to maximise (default: minimise).
        noise_reuse: generations that share one draw of noise.
        weight_decay: default L2 coefficient (``params.weight_decay``).
        trainable: which leaves evolve: pytree of bools or ``callable(path, leaf)``.
        noise: Gaussian generator, ``"hash"`` (fast, default) or ``"threefry"``
            (see :mod:`eggroll.noise`).
        track_best: keep a dense copy of the best member seen (``best_solution``,
            as evosax); turn off for large models to save one copy of the weights.

    Returns:
        A :class:`~eggroll.types.Strategy`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> es = open_es(population_size=8, solution=jnp.zeros(3))
        >>> state = es.init(jax.random.key(0), jnp.ones(3), es.default_params)
        >>> pop, state = es.ask(jax.random.key(1), state, es.default_params)
        >>> pop.shape
        (8, 3)
    """
    if fitness_shaping is None:
        fitness_shaping = "centered_rank" if group_size is None else "z_score"
    cfg = _core.make_config(
        population_size=population_size,
        solution=solution,
        optimizer=optax.adam(0.01) if optimizer is None else optimizer,
        antithetic=antithetic,
        noise_reuse=noise_reuse,
        maximize=maximize,
        fitness_shaping=fitness_shaping,
        group_size=group_size,
        rank=1,
        lowrank=False,
        trainable=trainable,
        noise=noise,
        track_best=track_best,
    )

    def members(state):
        pairs = jnp.arange(cfg.num_noise, dtype=jnp.int32)
        leaves = jax.tree.leaves(state.mean)
        noise = _core.pair_noise(cfg, state.key, state.generation_counter, pairs)
        out = []
        for spec, m, eps in zip(cfg.specs, leaves, noise, strict=True):
            if spec.kind == "frozen":
                out.append(jnp.broadcast_to(m, (cfg.population_size, *m.shape)))
                continue
            eps = eps * state.sigma
            if antithetic:  # members 2k, 2k+1 = mean + eps_k, mean - eps_k
                eps = jnp.stack([eps, -eps], axis=1).reshape(cfg.population_size, *m.shape)
            out.append((m.astype(jnp.float32)[None] + eps).astype(m.dtype))
        return jax.tree.unflatten(cfg.treedef, out)

    return _core.build_strategy(
        cfg,
        members,
        name="open_es",
        materialize=lambda population: population,
        sigma_init=sigma_init,
        weight_decay=weight_decay,
    )
