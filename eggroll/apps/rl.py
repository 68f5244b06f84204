"""Train a policy on a gymnax or Brax environment with EGGROLL or OpenAI-ES.

:class:`RLTask` is what ``eggroll rl`` runs through the one run loop
(:func:`eggroll.run.loop.run`); from Python::

    from eggroll.apps.rl import RLConfig, train, save_run
    result = train(RLConfig(env="CartPole-v1", strategy="eggroll", generations=20))
    save_run(result, "runs/cartpole")

One generation (``ask`` -> vmapped episodes -> ``tell``) is a single jitted
function; the task evaluates the mean policy every ``eval_every`` generations
and after the last (deterministic actions, fresh episode seeds) and keeps the
best mean policy seen by that evaluation, together with the observation
statistics it was evaluated with. The population's fitness is the mean episode
return (maximised). (``eggroll.rl_train`` is the old name of this module.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from eggroll import parallel
from eggroll.run.loop import RunOptions, Task
from eggroll.run.loop import run as run_loop

STRATEGIES = ("eggroll", "open_es")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Settings of a training run (the CLI's options).

    Attributes:
        env: gymnax id (``"CartPole-v1"`` ...) or Brax name (``"hopper"``, ``"ant"`` ...).
        strategy: ``"eggroll"`` (low-rank), ``"open_es"`` (full-rank OpenAI-ES), or an evosax
            baseline ``"evosax:<Class>"`` (e.g. ``"evosax:SNES"``; ``sigma`` sets its initial step size,
            evosax's own optimizer and learning rates apply, and ``learning_rate``, ``rank`` and
            ``weight_decay`` are not used).
        generations: number of generations to run (at most).
        population_size: members per generation (even: antithetic pairs).
        sigma: perturbation scale.
        learning_rate: Adam learning rate.
        rank: rank of EGGROLL's matrix perturbations.
        hidden: hidden widths of the MLP policy.
        activation: hidden activation.
        num_rollouts: episodes per member per generation.
        horizon: steps per episode (default: the environment's episode length; Brax 1000).
        stochastic: sample actions (categorical / Gaussian) during training.
        normalize_obs: running observation normalisation.
        common_random_numbers: all members share episode seeds within a generation.
        early_exit: stop a generation's episodes once all have ended (same returns).
        eval_every: evaluate the mean policy every this many generations (and at the end).
        eval_episodes: episodes of that evaluation.
        target_return: stop once the evaluated mean policy reaches this return.
        time_budget_s: seconds; stop early enough that the run (the last generation and the
            evaluation of the mean after it included) ends within them.
        weight_decay: L2 coefficient on the mean.
        backend: Brax physics backend (default: the environment's own).
        seed: random seed of the whole run.
    """

    env: str = "CartPole-v1"
    strategy: str = "eggroll"
    generations: int = 50
    population_size: int = 256
    sigma: float = 0.05
    learning_rate: float = 0.05
    rank: int = 1
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "tanh"
    num_rollouts: int = 4
    horizon: int | None = None
    stochastic: bool = False
    normalize_obs: bool = True
    common_random_numbers: bool = True
    early_exit: bool = True
    eval_every: int = 5
    eval_episodes: int = 16
    target_return: float | None = None
    time_budget_s: float | None = None
    weight_decay: float = 0.0
    backend: str | None = None
    seed: int = 0

    def validate(self) -> RLConfig:
        """Check the settings; raise ``ValueError`` saying what is wrong and what to do."""
        if self.strategy not in STRATEGIES and not self.strategy.startswith("evosax:"):
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {STRATEGIES} or evosax:<Class>")
        if self.population_size < 2 or self.population_size % 2:
            raise ValueError(
                f"population_size (--population) must be even and >= 2 (antithetic pairs), got "
                f"{self.population_size}: use {max(2, self.population_size + 1)}"
            )
        if self.population_size * self.num_rollouts >= 2**31:  # member and episode ids are int32
            raise ValueError(
                f"population_size x num_rollouts must be below 2^31 (int32 ids), got {self.population_size} x "
                f"{self.num_rollouts}; use a smaller --population"
            )
        for name in ("generations", "num_rollouts", "eval_every", "eval_episodes", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.sigma > 0 or not self.learning_rate > 0:
            raise ValueError(f"sigma and learning_rate must be > 0, got {self.sigma} and {self.learning_rate}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.target_return is not None and not math.isfinite(self.target_return):
            raise ValueError(f"target_return must be a finite number (or None), got {self.target_return}")
        if self.backend is not None:
            import gymnax

            if self.env in gymnax.registered_envs:
                raise ValueError(
                    f"--backend applies to Brax environments; {self.env} is a gymnax one: leave --backend out"
                )
        if any(int(w) < 1 for w in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        return self


@dataclasses.dataclass
class RLResult:
    """What :func:`train` returns.

    Attributes:
        config: the settings of the run.
        history: per generation ``generation``, ``mean_return``, ``max_return``,
            ``env_steps``, ``seconds``; per evaluation ``eval_generation``, ``eval_return``.
        best_params: the mean policy with the best evaluation so far.
        best_obs_stats: the observation statistics it was evaluated with.
        best_eval_return: that evaluation's mean return.
        final_params: the mean policy at the end.
        final_obs_stats: the observation statistics at the end.
        compile_seconds: seconds to compile a generation (done before the first one, in this process).
        generation: generations completed (counting those before a resume).
        interrupted: the signal that stopped the run early (``"SIGTERM"``, ``"SIGINT"``), else ``""``.
        resumed_from: the checkpoint generation the run continued from (``None``: a fresh run).
        checkpoint_dir: where checkpoints went (``None``: none).
    """

    config: RLConfig
    history: dict[str, list[float]]
    best_params: Any
    best_obs_stats: Any
    best_eval_return: float
    final_params: Any
    final_obs_stats: Any
    compile_seconds: float
    generation: int = 0
    interrupted: str = ""
    resumed_from: int | None = None
    checkpoint_dir: str | None = None


def build(config: RLConfig) -> tuple[Any, Any, Any, Any]:
    """Make the training fitness, the evaluation fitness, the strategy and the initial policy.

    Returns:
        ``(fitness, eval_fitness, strategy, initial_params)``.
    """
    import gymnax
    import optax

    from eggroll.problems.rl import make_env, rl_fitness
    from eggroll.strategies import make

    config.validate()
    env_kwargs: dict[str, Any] = {} if config.backend is None else {"backend": config.backend}
    if config.env not in gymnax.registered_envs:
        env_kwargs["episode_length"] = config.horizon or 1000
    env = make_env(config.env, **env_kwargs)
    common = {k: getattr(config, k) for k in ("hidden", "activation", "horizon", "normalize_obs", "early_exit")}
    training = {k: getattr(config, k) for k in ("stochastic", "num_rollouts", "common_random_numbers")}
    fitness = rl_fitness(env, **training, **common)
    eval_fitness = rl_fitness(env, policy=fitness.policy, stochastic=False, num_rollouts=config.eval_episodes, **common)
    params = fitness.init_params(jax.random.key(config.seed))
    kwargs: dict[str, Any] = dict(sigma_init=config.sigma, maximize=True)
    if not config.strategy.startswith("evosax:"):
        kwargs.update(optimizer=optax.adam(config.learning_rate), weight_decay=config.weight_decay)
    if config.strategy == "eggroll":
        kwargs["rank"] = config.rank
    es = make(config.strategy, config.population_size, params, **kwargs)
    return fitness, eval_fitness, es, params


_COLUMNS = (
    "generation",
    "eval_return",
    "mean_return",
    "max_return",
    "env_steps",
    "seconds",
    "sigma",
    "env_steps_per_s",
)


class RLTask(Task):
    """Neuroevolution of an MLP policy as a :class:`eggroll.run.loop.Task` (what ``eggroll rl`` runs).

    One generation (``ask`` -> vmapped episodes -> ``tell``) is one jitted
    function. The evaluation runs the mean policy deterministically on fresh
    episode seeds (generation 0 is the initial policy); the carry keeps the
    best evaluated mean policy with the observation statistics it was
    evaluated with. ``--target`` stops the run once an evaluation reaches it.

    Args:
        config: the run's settings.
        mesh: split the population over this device mesh (``None``: one device).
            Members' episodes run on their own device, the return vector is
            all-gathered and the update is computed replicated; the result
            matches a one-device run to float tolerance, and a checkpoint may
            be resumed on a different number of devices.
        render: also write one episode of the best policy (``replay.gif`` / ``replay.html``) at the end of a
            run that was not stopped by a signal (the command's ``--render``).
    """

    name = "rl"
    columns = _COLUMNS
    may_change = "--generations, --eval-every, --eval-episodes, --target, --time-budget, --devices and --quiet"

    def __init__(self, config: RLConfig, mesh: Any = None, render: bool = False):
        self.config, self.mesh, self.render = config.validate(), mesh, render
        if mesh is not None and config.strategy.startswith("evosax:"):
            raise ValueError(
                f"{config.strategy} runs on one device: leave out --devices (evosax has no sharded ask/tell)"
            )
        self.label = f"{config.strategy} {config.env}"
        self.population_size = config.population_size
        fitness, eval_fitness, es, params = build(config)
        self.fitness, self.es = fitness, es
        es_params = es.default_params
        key, k_init, k_fit = jax.random.split(jax.random.key(config.seed), 3)
        run_es = es if mesh is None else parallel.sharded(es, mesh)
        if mesh is not None:
            params, es_params, key, k_init, k_fit = parallel.replicate((params, es_params, key, k_init, k_fit), mesh)
        self._first = (run_es, k_init, params, es_params, k_fit, key)
        self.eval_key = jax.random.key(config.seed + 1_000_003)

        @jax.jit
        def generation(key, es_state, fit_state):
            k_ask, k_eval, k_tell = jax.random.split(key, 3)
            population, es_state = run_es.ask(k_ask, es_state, es_params)
            fit, fit_state = fitness.evaluate(k_eval, population, fit_state)
            if mesh is not None:  # the statistics are reduced over all members: keep them replicated
                fit_state = jax.lax.with_sharding_constraint(fit_state, NamedSharding(mesh, PartitionSpec()))
            es_state, _ = run_es.tell(k_tell, population, fit, es_state, es_params)
            return es_state, fit_state, (jnp.mean(fit), jnp.max(fit), fit_state.env_steps)

        @jax.jit
        def evaluate_mean(key, mean, fit_state):
            return jnp.mean(eval_fitness.rollout(key, mean, fit_state).returns)

        self._generation, self._evaluate_mean = generation, evaluate_mean
        self._built = first = self.init()  # the loop's first init() takes it: built once
        # compile now (the first step reuses it) and refuse a generation the memory cannot hold
        started = time.perf_counter()
        compiled = generation.lower(first["key"], first["es_state"], first["fit_state"]).compile()
        self.compile_seconds = time.perf_counter() - started
        what = f"a generation of {config.population_size} members x {config.num_rollouts} episodes"
        parallel.check_fits(compiled, what, "use a smaller --population or --rollouts, or more devices (--devices)")

    def settings(self) -> dict[str, Any]:
        return _resume_fields(self.config)

    _built: dict[str, Any] | None = None

    def init(self) -> dict[str, Any]:
        if self._built is not None:
            built, self._built = self._built, None
            return built
        run_es, k_init, params, es_params, k_fit, key = self._first
        es_state = run_es.init(k_init, params, es_params)
        fit_state = self.fitness.init(k_fit)
        if self.mesh is not None:
            fit_state = parallel.replicate(fit_state, self.mesh)
        best = (self.es.get_mean(es_state), fit_state.obs_stats)
        return {"es_state": es_state, "fit_state": fit_state, "key": key, "best": best}

    def step(self, carry, generation):
        t0 = time.perf_counter()
        es_state, fit_state, stats = self._generation(
            jax.random.fold_in(carry["key"], generation), carry["es_state"], carry["fit_state"]
        )
        mean_ret, max_ret, steps = (float(x) for x in parallel.to_host(stats))
        seconds = time.perf_counter() - t0
        previous = float(parallel.to_host(carry["fit_state"].env_steps))
        row = {"mean_return": mean_ret, "max_return": max_ret, "env_steps": steps}
        sigma = getattr(es_state, "sigma", None)
        if sigma is not None:
            row["sigma"] = float(parallel.to_host(sigma))
        row["env_steps_per_s"] = (steps - previous) / max(seconds, 1e-9)
        return {**carry, "es_state": es_state, "fit_state": fit_state}, row

    def evaluate(self, carry, generation):
        mean = self.es.get_mean(carry["es_state"])
        key = jax.random.fold_in(self.eval_key, generation)
        ret = float(parallel.to_host(self._evaluate_mean(key, mean, carry["fit_state"])))
        if generation > 0 and ret > self.best_return:  # the initial policy is a baseline, not a result
            self.best_return = ret
            carry = {**carry, "best": (mean, carry["fit_state"].obs_stats)}
        return carry, {"eval_return": ret}

    best_return = -math.inf

    def save_extra(self) -> dict[str, Any]:
        return {"best_eval_return": None if math.isinf(self.best_return) else self.best_return}

    def load_extra(self, extra) -> None:
        value = extra.get("best_eval_return")
        self.best_return = -math.inf if value is None else float(value)

    def done(self, row) -> bool:
        target = self.config.target_return
        return target is not None and row.get("eval_return") is not None and row["eval_return"] >= target

    def describe(self, row) -> str:
        text = f"gen {row['generation']:>4}"
        if row.get("mean_return") is not None:
            text += f"  mean {row['mean_return']:9.2f}  max {row['max_return']:9.2f}"
        if math.isfinite(self.best_return):
            text += f"  best eval {self.best_return:9.2f}"
        return text

    def result(self, run: Any) -> RLResult:
        """The :class:`RLResult` of a finished loop run."""
        carry = run.carry
        best_params, best_stats = carry["best"]
        return RLResult(
            config=self.config,
            history=_columns_of(run.history),
            best_params=parallel.to_host(best_params),
            best_obs_stats=parallel.to_host(best_stats),
            best_eval_return=self.best_return,
            final_params=parallel.to_host(self.es.get_mean(carry["es_state"])),
            final_obs_stats=parallel.to_host(carry["fit_state"].obs_stats),
            compile_seconds=self.compile_seconds,
            generation=run.generation,
            interrupted=run.stopped_by if run.stopped_by in ("SIGTERM", "SIGINT") else "",
            resumed_from=run.resumed_from,
            checkpoint_dir=run.checkpoint_dir,
        )

    def finish(self, carry, run) -> dict[str, Any]:
        files = save_run(self.result(run), run.out)
        if self.render and not run.exit_code:
            from eggroll.run.progress import console

            files["replay"] = replay_policy(files["policy"], run.out / "replay", self.config.seed, console.print)
        return {"best_eval_return": self.best_return, "files": {k: str(v) for k, v in files.items()}}


def _columns_of(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The loop's rows as ``history.json``'s lists (evaluations in their own two lists)."""
    per_generation = ("generation", "mean_return", "max_return", "env_steps", "seconds")
    history: dict[str, list[float]] = {k: [] for k in (*per_generation, "eval_generation", "eval_return")}
    for row in rows:
        if row["generation"] > 0:
            for k in per_generation:
                history[k].append(row[k])
        if row.get("eval_return") is not None:
            history["eval_generation"].append(row["generation"])
            history["eval_return"].append(row["eval_return"])
    return history


def train(
    config: RLConfig,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    log_dir: str | Path | None = None,
    mesh: Any = None,
) -> RLResult:
    """Train a policy through the one run loop (:func:`eggroll.run.loop.run` with an :class:`RLTask`).

    With ``checkpoint_dir`` the strategy state, the fitness state (observation
    statistics, step count), the run's key, the history and the best policy so
    far are saved there every ``checkpoint_every`` generations, when SIGTERM /
    Ctrl-C arrives (the current generation finishes first) and at the end;
    ``resume=True`` continues from the newest checkpoint exactly as if the run
    had never stopped. The CLI (``eggroll rl``) runs the same task with ``--out``.

    Args:
        config: the run's settings.
        progress: show the progress display.
        callback: ``callback(generation, row)`` after every generation.
        checkpoint_dir: where checkpoints go (``None``: no checkpoints).
        checkpoint_every: save every this many generations (``None``: only on interrupt and at the end).
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        log_dir: write the metrics there (:class:`eggroll.run.logging.MetricsLogger`).
        mesh: split the population over this device mesh (see :class:`RLTask`).

    Returns:
        the :class:`RLResult` (``interrupted`` tells whether SIGTERM / Ctrl-C stopped it).

    Raises:
        ValueError: bad settings, a fresh run into a directory that holds checkpoints, or other settings
            than the checkpoint's.
        eggroll.checkpoint.CheckpointError: no usable checkpoint to resume from.
    """
    task = RLTask(config, mesh)
    options = RunOptions(
        generations=config.generations,
        checkpoint_every=checkpoint_every,
        resume=resume,
        time_budget=config.time_budget_s,
        eval_every=config.eval_every,
        quiet=not progress,
    )
    result = run_loop(task, options, callback=callback, checkpoint_dir=checkpoint_dir, metrics_dir=log_dir)
    return task.result(result)


_NOT_IN_STATE = ("generations", "eval_every", "eval_episodes", "target_return", "time_budget_s")


def _resume_fields(config: RLConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint (JSON)."""
    fields = dataclasses.asdict(config)
    fields["hidden"] = list(fields["hidden"])
    return {k: v for k, v in fields.items() if k not in _NOT_IN_STATE}


# ------------------------------------------------------------------ saving / loading


def save_policy(path: str | Path, config: RLConfig, params: Any, obs_stats: Any) -> Path:
    """Save a policy (Flax msgpack) with the settings needed to rebuild it.

    Writes ``path`` (msgpack bytes of ``{"params", "obs_stats"}``) and
    ``path`` with suffix ``.json`` (the :class:`RLConfig`).
    """
    from flax import serialization

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"params": params, "obs_stats": obs_stats._asdict()}  # {"count", "mean", "m2"}
    path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, blob)))
    path.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    return path


def load_policy(path: str | Path) -> tuple[RLConfig, Any, Any]:
    """Load what :func:`save_policy` wrote.

    Returns:
        ``(config, params, obs_stats)``.

    Raises:
        FileNotFoundError: when the policy or its ``.json`` settings are missing.
    """
    from flax import serialization

    from eggroll.problems.rl.normalize import RunningStats

    path = Path(path)
    if path.is_dir():
        path = path / "policy.msgpack"
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        raise FileNotFoundError(f"no saved policy at {path} (expected {path.name} and {meta.name}; see `eggroll rl`)")
    raw = json.loads(meta.read_text())
    raw["hidden"] = tuple(raw["hidden"])
    config = RLConfig(**raw)
    blob = serialization.msgpack_restore(path.read_bytes())
    obs_stats = RunningStats(**jax.tree.map(jnp.asarray, blob["obs_stats"]))
    return config, jax.tree.map(jnp.asarray, blob["params"]), obs_stats


def plot_history(result: RLResult, path: str | Path) -> Path:
    """Save the learning curve (population mean / max return and mean-policy evaluations) as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

    h = result.history
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    ax.plot(h["generation"], h["mean_return"], label="population mean", color="tab:blue")
    ax.plot(h["generation"], h["max_return"], label="population best", color="tab:blue", alpha=0.35)
    if h["eval_generation"]:
        ax.plot(h["eval_generation"], h["eval_return"], "o-", label="mean policy (eval)", color="tab:orange")
    c = result.config
    ax.set_title(f"{c.env}: {c.strategy}, population {c.population_size}, sigma {c.sigma}, lr {c.learning_rate}")
    ax.set(xlabel="generation", ylabel="episode return")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def save_run(result: RLResult, out_dir: str | Path) -> dict[str, Path]:
    """Write a run's files: ``policy.msgpack`` (+ ``.json``), ``history.json``, ``learning_curve.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"policy": save_policy(out / "policy.msgpack", result.config, result.best_params, result.best_obs_stats)}
    files["policy_settings"] = files["policy"].with_suffix(".json")  # `eggroll rl replay` needs both
    summary = {
        "config": dataclasses.asdict(result.config),
        "best_eval_return": result.best_eval_return,
        "compile_seconds": result.compile_seconds,
        "history": result.history,
    }
    files["history"] = out / "history.json"
    files["history"].write_text(json.dumps(summary, indent=1))
    files["plot"] = plot_history(result, out / "learning_curve.png")
    return files


def replay_policy(policy: str | Path, out: str | Path, seed: int = 0, say: Callable[[str], None] | None = None) -> Path:
    """Play one episode of a saved policy (deterministic actions) and write it to ``out`` (GIF / HTML).

    Raises:
        FileNotFoundError: no saved policy at ``policy``.
    """
    from eggroll.problems.rl.render import play_episode, render_episode

    config, params, obs_stats = load_policy(policy)
    fitness, _, _, _ = build(config)
    stats = obs_stats if config.normalize_obs else None
    episode = play_episode(fitness.env, fitness.policy, params, stats, jax.random.key(seed), horizon=fitness.horizon)
    if say is not None:
        say(f"episode return {episode.total:.2f} over {len(episode.rewards)} steps")
    return render_episode(fitness.env, episode, Path(out))
