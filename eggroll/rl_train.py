"""Train a policy on a gymnax or Brax environment with EGGROLL or OpenAI-ES.

This is the loop behind ``eggroll rl``; use it from Python as::

    from eggroll.rl_train import RLConfig, train, save_run
    result = train(RLConfig(env="CartPole-v1", strategy="eggroll", generations=20))
    save_run(result, "runs/cartpole")

One generation (``ask`` -> vmapped episodes -> ``tell``) is a single jitted
function; the Python loop around it only reports progress, evaluates the mean
policy every ``eval_every`` generations (deterministic actions, fresh episode
seeds) and keeps the best mean policy seen by that evaluation, together with the
observation statistics it was evaluated with. The population's fitness is the
mean episode return (maximised).
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

STRATEGIES = ("eggroll", "open_es")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Settings of a training run (the CLI's options).

    Attributes:
        env: gymnax id (``"CartPole-v1"`` ...) or Brax name (``"hopper"``, ``"ant"`` ...).
        strategy: ``"eggroll"`` (low-rank) or ``"open_es"`` (full-rank OpenAI-ES).
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
        time_budget_s: stop (after evaluating the mean) once this many seconds have passed
            since the end of the first generation (so compilation is not counted).
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
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {STRATEGIES}")
        if self.population_size < 2 or self.population_size % 2:
            raise ValueError(f"population_size must be even and >= 2 (antithetic pairs), got {self.population_size}")
        for name in ("generations", "num_rollouts", "eval_every", "eval_episodes", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.sigma > 0 or not self.learning_rate > 0:
            raise ValueError(f"sigma and learning_rate must be > 0, got {self.sigma} and {self.learning_rate}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
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
        compile_seconds: time of the first generation (compilation included).
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
    import optax

    import eggroll
    from eggroll.problems.rl import make_env, rl_fitness

    config.validate()
    env_kwargs: dict[str, Any] = {}
    if config.backend is not None:
        env_kwargs["backend"] = config.backend
    import gymnax

    if config.env not in gymnax.registered_envs:
        env_kwargs["episode_length"] = config.horizon or 1000
    env = make_env(config.env, **env_kwargs)
    common = dict(
        hidden=config.hidden,
        activation=config.activation,
        horizon=config.horizon,
        normalize_obs=config.normalize_obs,
        early_exit=config.early_exit,
    )
    fitness = rl_fitness(
        env,
        stochastic=config.stochastic,
        num_rollouts=config.num_rollouts,
        common_random_numbers=config.common_random_numbers,
        **common,
    )
    eval_fitness = rl_fitness(env, policy=fitness.policy, stochastic=False, num_rollouts=config.eval_episodes, **common)
    params = fitness.init_params(jax.random.key(config.seed))
    kwargs = dict(
        optimizer=optax.adam(config.learning_rate),
        sigma_init=config.sigma,
        maximize=True,
        weight_decay=config.weight_decay,
    )
    if config.strategy == "eggroll":
        es = eggroll.eggroll(config.population_size, params, rank=config.rank, **kwargs)
    else:
        es = eggroll.open_es(config.population_size, params, **kwargs)
    return fitness, eval_fitness, es, params


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
    """Run the training loop.

    With ``checkpoint_dir`` the strategy state (mean, optimizer state, noise
    key), the fitness function's state (observation statistics, step count),
    the run's RNG key, the generation, the history and the best policy so far
    are saved there (orbax, :class:`eggroll.checkpoint.Checkpointer`) every
    ``checkpoint_every`` generations, when SIGTERM / Ctrl-C arrives (the
    current generation finishes first) and at the end. ``resume=True``
    continues from the newest checkpoint exactly as if the run had never
    stopped: same final mean parameters, bit for bit, as an uninterrupted run
    of ``config.generations`` generations.

    Args:
        config: the run's settings.
        progress: show a rich progress bar.
        callback: called as ``callback(generation, row)`` after every generation
            (``row`` holds that generation's numbers, plus ``eval_return`` when evaluated).
        checkpoint_dir: where checkpoints go (``None``: no checkpoints).
        checkpoint_every: save every this many generations (``None``: only on
            interrupt and at the end).
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        log_dir: write one row per generation there (:class:`eggroll.logging.MetricsLogger`:
            JSONL and CSV always, TensorBoard when tensorboardX is installed), with
            the returns, sigma, env steps, seconds and env steps per second.
        mesh: split the population over this device mesh
            (:func:`eggroll.parallel.make_mesh` / :func:`eggroll.parallel.mesh_from_option`;
            ``None``: one device). Members' episodes run on their own device, the
            return vector is all-gathered and the update is computed replicated;
            the observation statistics are summed across devices. The result
            matches a one-device run to float tolerance, and a checkpoint may be
            resumed on a different number of devices.

    Returns:
        the :class:`RLResult` (``interrupted`` tells whether SIGTERM / Ctrl-C stopped it).

    Raises:
        ValueError: ``resume`` without ``checkpoint_dir``, a fresh run into a
            directory that already holds checkpoints, or a checkpoint written with
            different settings.
        eggroll.checkpoint.CheckpointError: no usable checkpoint to resume from.
    """
    from eggroll.checkpoint import Checkpointer, GracefulInterrupt

    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder of the run to continue)")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 generations, got {checkpoint_every}")
    fitness, eval_fitness, es, params = build(config)
    es_params = es.default_params
    key = jax.random.key(config.seed)
    key, k_init, k_fit = jax.random.split(key, 3)
    run_es = es
    if mesh is not None:
        from eggroll import parallel

        run_es = parallel.sharded(es, mesh)
        params, es_params, key, k_init, k_fit = parallel.replicate((params, es_params, key, k_init, k_fit), mesh)
    es_state = run_es.init(k_init, params, es_params)
    fit_state = fitness.init(k_fit)
    if mesh is not None:
        fit_state = parallel.replicate(fit_state, mesh)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every, max_to_keep=2)
        ckpt.refuse_fresh_run(resume)

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

    def host(tree: Any) -> Any:
        if mesh is None:
            return tree
        from eggroll import parallel

        return parallel.to_host(tree)

    history: dict[str, list[float]] = {
        k: [] for k in ("generation", "mean_return", "max_return", "env_steps", "seconds")
    }
    history["eval_generation"], history["eval_return"] = [], []
    best: tuple[float, Any, Any] = (-math.inf, None, None)
    compile_seconds = 0.0
    eval_key = jax.random.key(config.seed + 1_000_003)

    def run_eval(gen: int) -> float:
        ret = float(host(evaluate_mean(jax.random.fold_in(eval_key, gen), es.get_mean(es_state), fit_state)))
        history["eval_generation"].append(gen)
        history["eval_return"].append(ret)
        return ret

    def items() -> dict[str, Any]:
        best_params = best[1] if best[1] is not None else es.get_mean(es_state)
        best_stats = best[2] if best[2] is not None else fit_state.obs_stats
        return {"es_state": es_state, "fit_state": fit_state, "key": key, "best": (best_params, best_stats)}

    def save(gen: int) -> None:
        if ckpt is None:
            return
        meta = {
            "generation": gen,
            "config": _resume_fields(config),
            "history": history,
            "best_eval_return": best[0] if best[1] is not None else None,
            "compile_seconds": compile_seconds,
        }
        ckpt.save(gen, items(), meta)

    first = 1
    if resume:
        restored, meta = ckpt.restore(items())
        ckpt.check_settings(
            meta.get("config"),
            _resume_fields(config),
            may_change="--generations, --eval-every, --eval-episodes, --target, --time-budget and --devices",
        )
        es_state, fit_state, key = restored["es_state"], restored["fit_state"], restored["key"]
        history = {k: list(v) for k, v in meta["history"].items()}
        if meta.get("best_eval_return") is not None:
            best = (float(meta["best_eval_return"]), *restored["best"])
        compile_seconds = float(meta.get("compile_seconds", 0.0))
        first = int(meta["generation"]) + 1
    else:
        run_eval(0)  # the initial policy, as a baseline for the curve
    interrupted = ""
    gen = first - 1
    start = time.perf_counter()
    logger = None
    if log_dir is not None:
        from eggroll.logging import MetricsLogger

        logger = MetricsLogger(log_dir)
        logger.truncate(first)  # a resumed run rewrites the generations after its checkpoint
    with _progress(progress, config, first - 1) as (bar, task), GracefulInterrupt() as signals:
        for gen in range(first, config.generations + 1):
            t0 = time.perf_counter()
            es_state, fit_state, stats = generation(jax.random.fold_in(key, gen), es_state, fit_state)
            mean_ret, max_ret, steps = host(stats)
            mean_ret, max_ret, steps = float(mean_ret), float(max_ret), float(steps)
            seconds = time.perf_counter() - t0
            if gen == first:
                compile_seconds = seconds
                start = time.perf_counter()
            row = {"generation": gen, "mean_return": mean_ret, "max_return": max_ret, "env_steps": steps}
            row["seconds"] = seconds
            for k, v in row.items():
                history[k].append(v)
            over = config.time_budget_s is not None and time.perf_counter() - start >= config.time_budget_s
            last = gen == config.generations or over or signals.requested is not None
            stop = False
            if gen % config.eval_every == 0 or last:
                row["eval_return"] = ret = run_eval(gen)
                if ret > best[0]:
                    best = (ret, es.get_mean(es_state), fit_state.obs_stats)
                stop = config.target_return is not None and ret >= config.target_return
            if logger is not None:
                sigma = getattr(es_state, "sigma", None)
                extra = {"sigma": float(host(sigma))} if sigma is not None else {}
                done = steps - (history["env_steps"][-2] if len(history["env_steps"]) > 1 else 0.0)
                fixed = {"eval_return": math.nan}  # a fixed CSV column; empty (JSON null) when not evaluated
                logger.log(gen, {**fixed, **row, **extra, "env_steps_per_s": done / max(seconds, 1e-9)})
            if bar is not None:
                bar.update(task, advance=1, description=_describe(row, best[0]))
            if callback is not None:
                callback(gen, row)
            if signals.requested is not None:
                interrupted = signals.signal_name
                break
            if stop or over:
                break
            if ckpt is not None and ckpt.should_save(gen):
                save(gen)
    if best[1] is None and gen >= first:  # stopped by a signal inside the callback: evaluate what there is
        ret = run_eval(gen)
        best = (ret, es.get_mean(es_state), fit_state.obs_stats)
    if logger is not None:
        logger.close()
    if ckpt is not None:
        save(gen)  # the end of the run, or the interrupted generation (no-op if already saved)
        ckpt.close()
    return RLResult(
        config=config,
        history=history,
        best_params=host(best[1]),
        best_obs_stats=host(best[2]),
        best_eval_return=best[0],
        final_params=host(es.get_mean(es_state)),
        final_obs_stats=host(fit_state.obs_stats),
        compile_seconds=compile_seconds,
        generation=gen,
        interrupted=interrupted,
        resumed_from=first - 1 if resume else None,
        checkpoint_dir=str(ckpt.directory) if ckpt is not None else None,
    )


_NOT_IN_STATE = ("generations", "eval_every", "eval_episodes", "target_return", "time_budget_s")


def _resume_fields(config: RLConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint (JSON)."""
    fields = dataclasses.asdict(config)
    fields["hidden"] = list(fields["hidden"])
    return {k: v for k, v in fields.items() if k not in _NOT_IN_STATE}


def _describe(row: dict[str, float], best: float) -> str:
    text = f"gen {row['generation']:>4}  mean {row['mean_return']:9.2f}  max {row['max_return']:9.2f}"
    if math.isfinite(best):
        text += f"  best eval {best:9.2f}"
    return text


class _progress:
    """A rich progress bar, or nothing."""

    def __init__(self, enabled: bool, config: RLConfig, done: int = 0):
        self.enabled, self.config, self.bar, self.done = enabled, config, None, done

    def __enter__(self):
        if not self.enabled:
            return None, None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn(f"[bold]{self.config.strategy} {self.config.env}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
        )
        self.bar.__enter__()
        return self.bar, self.bar.add_task("compiling ...", total=self.config.generations, completed=self.done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


# ------------------------------------------------------------------ saving / loading


def save_policy(path: str | Path, config: RLConfig, params: Any, obs_stats: Any) -> Path:
    """Save a policy (Flax msgpack) with the settings needed to rebuild it.

    Writes ``path`` (msgpack bytes of ``{"params", "obs_stats"}``) and
    ``path`` with suffix ``.json`` (the :class:`RLConfig`).
    """
    from flax import serialization

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"params": params, "obs_stats": {"count": obs_stats.count, "mean": obs_stats.mean, "m2": obs_stats.m2}}
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
    stats = blob["obs_stats"]
    obs_stats = RunningStats(jnp.asarray(stats["count"]), jnp.asarray(stats["mean"]), jnp.asarray(stats["m2"]))
    return config, jax.tree.map(jnp.asarray, blob["params"]), obs_stats


def plot_history(result: RLResult, path: str | Path) -> Path:
    """Save the learning curve (population mean / max return and mean-policy evaluations) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h = result.history
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(h["generation"], h["mean_return"], label="population mean", color="tab:blue")
    ax.plot(h["generation"], h["max_return"], label="population best", color="tab:blue", alpha=0.35)
    if h["eval_generation"]:
        ax.plot(h["eval_generation"], h["eval_return"], "o-", label="mean policy (eval)", color="tab:orange")
    c = result.config
    ax.set_title(f"{c.env}: {c.strategy}, population {c.population_size}, sigma {c.sigma}, lr {c.learning_rate}")
    ax.set_xlabel("generation")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_run(result: RLResult, out_dir: str | Path) -> dict[str, Path]:
    """Write a run's files: ``policy.msgpack`` (+ ``.json``), ``history.json``, ``learning_curve.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"policy": save_policy(out / "policy.msgpack", result.config, result.best_params, result.best_obs_stats)}
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
