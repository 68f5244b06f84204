"""Neuroevolution on JAX reinforcement-learning environments (gymnax and Brax).

* :func:`make_env` / :class:`Env`: one pure interface over gymnax and Brax.
* :func:`rl_fitness` / :class:`RLFitness`: episode-return fitness of a Flax
  policy, vmapped over an OpenAI-ES or EGGROLL population, with running
  observation normalisation kept in its state.
* :mod:`~eggroll.problems.rl.normalize`: the Welford statistics.
"""

from eggroll.problems.rl.envs import Env, brax_env, brax_names, gymnax_env, gymnax_names, make_env
from eggroll.problems.rl.fitness import (
    RLFitness,
    RLFitnessState,
    Rollouts,
    apply_policy,
    make_policy,
    rl_fitness,
)
from eggroll.problems.rl.normalize import RunningStats

__all__ = [
    "Env",
    "RLFitness",
    "RLFitnessState",
    "Rollouts",
    "RunningStats",
    "apply_policy",
    "brax_env",
    "brax_names",
    "gymnax_env",
    "gymnax_names",
    "make_env",
    "make_policy",
    "rl_fitness",
]
