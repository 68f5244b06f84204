"""Episode-return fitness for gymnax and Brax policies, vmapped over a population.

:func:`rl_fitness` builds an :class:`RLFitness`: a NamedTuple of pure functions

* ``init(key) -> state`` (observation statistics, counters),
* ``evaluate(key, population, state) -> (fitness, state)``,
* ``rollout(key, params, state) -> Rollouts`` (one solution, e.g. the mean; no state update),
* ``init_params(key) -> params`` (initial policy variables, the ES's starting solution).

``population`` is either an ordinary stacked pytree (OpenAI-ES, or anything with
a leading population axis) or an EGGROLL population; for the latter each member
is viewed through ``eggroll.member`` and the policy runs through
``eggroll.apply_flax``, so the Dense kernels stay shared and no per-member
matrix is formed.

Each member plays ``num_rollouts`` episodes of at most ``horizon`` steps.
Rewards after an episode's end are masked out; the fitness is the mean return
over the rollouts, a quantity to MAXIMISE (build the strategy with
``maximize=True``). With ``common_random_numbers=True`` every member sees the
same reset states and step noise (the "Pegasus" trick, lower-variance
rankings); otherwise each member's episodes are keyed by its member id.
Observations are normalised with running statistics (:mod:`.normalize`) that
are updated after every ``evaluate`` from the observations the policies saw
while their episodes were running.

Example:
    >>> fit = rl_fitness("CartPole-v1", hidden=(8,), horizon=20)   # doctest: +SKIP
    >>> params = fit.init_params(jax.random.key(0))                 # doctest: +SKIP
    >>> fit.rollout(jax.random.key(1), params, fit.init(jax.random.key(2))).returns  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from eggroll.lowrank import LowRank, is_lowrank
from eggroll.models.mlp import MLPPolicy, default_head
from eggroll.problems.rl import normalize as norm
from eggroll.problems.rl.envs import Env, make_env


class RLFitnessState(NamedTuple):
    """What the fitness function carries between generations.

    Attributes:
        obs_stats: running observation statistics used for normalisation.
        env_steps: total environment steps taken inside episodes so far (float32).
        evaluations: number of ``evaluate`` calls so far.
    """

    obs_stats: norm.RunningStats
    env_steps: jax.Array
    evaluations: jax.Array


class Rollouts(NamedTuple):
    """Results of a batch of episodes.

    Attributes:
        returns: undiscounted returns, shape ``(..., num_rollouts)``.
        lengths: number of steps before the episode ended (at most the horizon).
    """

    returns: jax.Array
    lengths: jax.Array


class RLFitness(NamedTuple):
    """A pure episode-return fitness function; see the module docstring.

    Attributes:
        init: ``key -> RLFitnessState``.
        evaluate: ``(key, population, state) -> (fitness (N,), state)``; fitness is the mean return.
        rollout: ``(key, params, state) -> Rollouts`` for one solution, without updating the state.
        evaluate_rollouts: ``(key, population, state) -> (Rollouts (N, R), state)``.
        init_params: ``key -> policy variables`` to start the search from.
        env: the :class:`~eggroll.problems.rl.envs.Env`.
        policy: the Flax policy module.
        num_rollouts: episodes per member.
        horizon: maximum steps per episode (at most the environment's own time limit: a longer one is refused).
    """

    init: Callable[[jax.Array], RLFitnessState]
    evaluate: Callable[[jax.Array, Any, RLFitnessState], tuple[jax.Array, RLFitnessState]]
    rollout: Callable[[jax.Array, Any, RLFitnessState], Rollouts]
    evaluate_rollouts: Callable[[jax.Array, Any, RLFitnessState], tuple[Rollouts, RLFitnessState]]
    init_params: Callable[[jax.Array], Any]
    env: Env
    policy: nn.Module
    num_rollouts: int
    horizon: int


def make_policy(
    env: Env, hidden: Sequence[int] = (32, 32), activation: str | Callable = "tanh", stochastic: bool = False
) -> MLPPolicy:
    """An :class:`~eggroll.models.mlp.MLPPolicy` whose head fits ``env``'s action space."""
    kwargs: dict[str, Any] = {}
    if not env.discrete:
        kwargs = {"action_low": tuple(env.action_low.tolist()), "action_high": tuple(env.action_high.tolist())}
    return MLPPolicy(
        action_dim=env.action_size,
        hidden=tuple(hidden),
        activation=activation,
        head=default_head(env.discrete, stochastic),
        **kwargs,
    )


def has_lowrank(params: Any) -> bool:
    """Whether a (member's) parameter pytree holds :class:`~eggroll.lowrank.LowRank` leaves."""
    return any(isinstance(x, LowRank) for x in jax.tree.leaves(params, is_leaf=is_lowrank))


def apply_policy(policy: nn.Module, params: Any, obs: jax.Array, key: jax.Array | None) -> jax.Array:
    """Run ``policy`` on one observation: ``eggroll.apply_flax`` for low-rank members, else ``apply``."""
    args = (obs,) if key is None else (obs, key)
    if has_lowrank(params):
        import eggroll

        return eggroll.apply_flax(policy, params, *args)
    return policy.apply(params, *args)


def _is_eggroll_population(population: Any) -> bool:
    return hasattr(population, "index") and not isinstance(population, dict)


def rl_fitness(
    env: str | Env,
    policy: nn.Module | None = None,
    *,
    hidden: Sequence[int] = (32, 32),
    activation: str | Callable = "tanh",
    stochastic: bool = False,
    num_rollouts: int = 1,
    horizon: int | None = None,
    normalize_obs: bool = True,
    obs_clip: float = 10.0,
    common_random_numbers: bool = True,
    early_exit: bool = False,
    env_kwargs: dict[str, Any] | None = None,
) -> RLFitness:
    """Build the episode-return fitness of a policy on a gymnax or Brax environment.

    Args:
        env: an environment name (``"CartPole-v1"``, ``"Pendulum-v1"``, ``"hopper"`` ...)
            or an :class:`~eggroll.problems.rl.envs.Env` from ``make_env``.
        policy: a Flax module called as ``policy.apply(variables, obs)`` (deterministic)
            or ``policy.apply(variables, obs, key)`` (stochastic) returning an action;
            default: an :class:`~eggroll.models.mlp.MLPPolicy` built from ``hidden``,
            ``activation`` and ``stochastic`` with a head that fits the action space.
        hidden: hidden widths of the default policy.
        activation: hidden activation of the default policy.
        stochastic: pass a fresh key to the policy at every step (categorical /
            Gaussian actions); otherwise the policy is called without a key.
        num_rollouts: episodes per member; the fitness is their mean return.
        horizon: steps per episode (default: the environment's own episode length).
        normalize_obs: normalise observations with running statistics.
        obs_clip: clip normalised observations to ``[-obs_clip, obs_clip]``.
        common_random_numbers: every member sees the same episode seeds.
        early_exit: stop stepping once every episode of the batch has ended
            (``lax.while_loop``); the returns are identical to the fixed-horizon
            ``lax.scan`` (the default), which is faster when episodes are long.
        env_kwargs: passed to ``make_env`` when ``env`` is a name (for Brax,
            ``episode_length`` defaults to ``horizon``).

    Returns:
        the :class:`RLFitness`.
    """
    if num_rollouts < 1:
        raise ValueError(f"num_rollouts must be >= 1, got {num_rollouts}")
    if isinstance(env, str):
        kwargs = dict(env_kwargs or {})
        import gymnax

        if env not in gymnax.registered_envs and horizon is not None:
            kwargs.setdefault("episode_length", horizon)
        env = make_env(env, **kwargs)
    horizon = env.max_steps if horizon is None else int(horizon)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if horizon > env.max_steps:  # the environment's own time limit would end every episode before it
        raise ValueError(
            f"horizon {horizon} is longer than {env.name}'s episodes ({env.max_steps} steps, its time limit): use "
            f"horizon <= {env.max_steps}, or raise the limit (gymnax: env_kwargs={{'env_params': "
            f"{{'max_steps_in_episode': {horizon}}}}})"
        )
    if policy is None:
        policy = make_policy(env, hidden, activation, stochastic)

    def init(key: jax.Array) -> RLFitnessState:
        del key
        return RLFitnessState(norm.init_stats(env.obs_size), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def init_params(key: jax.Array) -> Any:
        return policy.init(key, jnp.zeros(env.obs_size, jnp.float32))

    def one_step(params, run_key, t, obs, env_state, stats):
        key = jax.random.fold_in(run_key, t)
        k_act, k_env = jax.random.split(key)
        x = norm.normalize(stats, obs, obs_clip) if normalize_obs else obs
        action = apply_policy(policy, params, x, k_act if stochastic else None)
        return env.step(k_env, env_state, action)

    def run(key, xs, view, ids, stats):
        """Play all episodes; xs are vmapped over, ``view(x)`` gives a member's params."""
        n = ids.shape[0]
        if common_random_numbers:
            # Keys stay unbatched over members, so key derivation, resets and action noise
            # are computed once per episode slot, not once per member.
            keys, key_axis = jax.random.split(key, num_rollouts), None
            reset_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
            run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
            obs, env_state = jax.vmap(env.reset)(reset_keys)
            obs, env_state = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), (obs, env_state))
        else:
            keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), num_rollouts))(ids)
            key_axis = 0
            reset_keys = jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, 0)))(keys)
            run_keys = jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, 1)))(keys)
            obs, env_state = jax.vmap(jax.vmap(env.reset))(reset_keys)
        zeros = jnp.zeros((n, num_rollouts), jnp.float32)
        shift = norm.shift_for(stats, jnp.mean(obs, axis=(0, 1)))

        def member_step(x, run_key, t, obs, env_state):
            params = view(x)
            return jax.vmap(one_step, in_axes=(None, 0, None, 0, 0, None))(params, run_key, t, obs, env_state, stats)

        def body(carry):
            t, obs, env_state, ret, alive, length, count, s1, s2 = carry
            nobs, nstate, reward, done = jax.vmap(member_step, in_axes=(0, key_axis, None, 0, 0))(
                xs, run_keys, t, obs, env_state
            )
            live = alive.astype(jnp.float32)
            ret = ret + jnp.where(alive, reward, 0.0)
            c, d1, d2 = norm.batch_moments(obs, live, shift)
            alive = jnp.logical_and(alive, jnp.logical_not(done))
            return (t + 1, nobs, nstate, ret, alive, length + live, count + c, s1 + d1, s2 + d2)

        carry = (jnp.zeros((), jnp.int32), obs, env_state, zeros, zeros > -1.0, zeros)
        carry = carry + (jnp.zeros((), jnp.float32), jnp.zeros_like(shift), jnp.zeros_like(shift))
        if early_exit:
            carry = jax.lax.while_loop(lambda c: (c[0] < horizon) & jnp.any(c[4]), body, carry)
        else:
            carry, _ = jax.lax.scan(lambda c, _: (body(c), None), carry, None, length=horizon)
        _, _, _, ret, _, length, count, s1, s2 = carry
        return Rollouts(ret, length), (count, s1, s2, shift)

    def members(population):
        if _is_eggroll_population(population):
            import eggroll

            return population.index, (lambda i: eggroll.member(population, i)), population.index
        leaves = jax.tree.leaves(population)
        if not leaves:
            raise ValueError("the population is empty")
        n = leaves[0].shape[0]
        return population, (lambda p: p), jnp.arange(n, dtype=jnp.int32)

    def evaluate_rollouts(key, population, state):
        xs, view, ids = members(population)
        rollouts, (count, s1, s2, shift) = run(key, xs, view, ids, state.obs_stats)
        stats = norm.update(state.obs_stats, count, s1, s2, shift) if normalize_obs else state.obs_stats
        steps = state.env_steps + jnp.sum(rollouts.lengths)
        return rollouts, RLFitnessState(stats, steps, state.evaluations + 1)

    def evaluate(key, population, state):
        rollouts, state = evaluate_rollouts(key, population, state)
        return jnp.mean(rollouts.returns, axis=-1), state

    def rollout(key, params, state):
        stacked = jax.tree.map(lambda x: x[None], params)
        rollouts, _ = run(key, stacked, lambda p: p, jnp.zeros(1, jnp.int32), state.obs_stats)
        return Rollouts(rollouts.returns[0], rollouts.lengths[0])

    return RLFitness(
        init=init,
        evaluate=evaluate,
        rollout=rollout,
        evaluate_rollouts=evaluate_rollouts,
        init_params=init_params,
        env=env,
        policy=policy,
        num_rollouts=num_rollouts,
        horizon=horizon,
    )
