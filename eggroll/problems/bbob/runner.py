"""A COCO-style benchmark runner: any eggroll or evosax strategy on chosen BBOB problems.

The runner evaluates every (function, instance) problem of one dimension *at
once*: the strategy state is ``vmap``-ed over the problems, each generation asks
every problem's population, evaluates them all with one grouped
:func:`~eggroll.problems.bbob.suite.suite_evaluate` call, and tells every state.
Generations run in ``lax.scan`` chunks (one compiled call per chunk), between
which the progress display is updated.

Runtimes are recorded the way COCO defines them: for each of the 51 targets
``f - fopt <= 10^k`` (``k = 2, 1.8, ..., -8``), the number of the first function
evaluation (counting members in population order) whose value reached it.

Strategies are told ``f - fopt`` instead of ``f``: the two differ by a constant
per problem, to which every strategy here is invariant (they rank or
standardise fitness), and ``f - fopt`` keeps full precision in float32 where
``f`` (with ``|fopt|`` up to 1000) would not.

Long runs checkpoint (orbax, :class:`eggroll.checkpoint.Checkpointer`) at the
end of every (strategy, dimension) run, every ``checkpoint_every`` chunks and on
SIGTERM / Ctrl-C, resume bit for bit, and log one metrics row per chunk
(:class:`eggroll.logging.MetricsLogger`).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.bbob.suite import BBOBSuite, parse_ids, suite_evaluate

__all__ = [
    "BUILTIN_STRATEGIES",
    "Competitor",
    "BenchmarkResult",
    "TARGETS",
    "make_competitor",
    "run_benchmark",
]

COCO_DIMENSIONS: tuple[int, ...] = (2, 3, 5, 10, 20, 40)
"""Dimensions of COCO's ``bbob`` suite (the only ones its observer can log)."""

TARGETS: np.ndarray = 10.0 ** np.linspace(2.0, -8.0, 51)
"""COCO's 51 standard precision targets ``10^2 ... 10^-8`` (step ``10^0.2``)."""


@dataclasses.dataclass(frozen=True)
class Competitor:
    """A strategy prepared for one dimension and budget.

    Attributes:
        name: label in tables and plots.
        strategy: an object with evosax-0.3 ``init/ask/tell`` (an eggroll
            :class:`~eggroll.types.Strategy` or an evosax algorithm).
        params: the params passed to ``init/ask/tell``.
        template: the solution pytree of the strategy (a ``(D,)`` vector, or a
            matrix for EGGROLL); the initial mean is reshaped to it.
        to_points: ``population -> (N, D)`` candidate points.
        population_size: members per generation.
    """

    name: str
    strategy: Any
    params: Any
    template: jax.Array
    to_points: Callable[[Any], jax.Array]
    population_size: int


def _factor_shape(d: int) -> tuple[int, int]:
    """The most square ``(a, b)`` with ``a * b == d`` and ``a <= b``."""
    a = int(math.isqrt(d))
    while d % a:
        a -= 1
    return a, d // a


def _default_es_popsize(d: int) -> int:
    n = 4 + int(3 * math.log(d))
    return 2 * n  # OpenAI-ES style methods need more members than CMA-ES; even for antithetic pairs


def _jit_params(es: Any) -> Any:
    """``es.default_params`` computed in one compiled call (evosax builds them with many eager ops)."""
    with jax.numpy_rank_promotion("allow"):
        return jax.jit(lambda: es.default_params)()


def _annealed(start: float, generations: int, final_ratio: float = 1e-3) -> Callable:
    import optax

    return optax.exponential_decay(start, transition_steps=max(generations, 1), decay_rate=final_ratio)


def make_competitor(
    name: str,
    dimension: int,
    budget: int,
    *,
    population_size: int | None = None,
    sigma: float | None = None,
    learning_rate: float | None = None,
    rank: int = 1,
) -> Competitor:
    """Builds a built-in competitor for a ``dimension``-D problem and ``budget`` evaluations.

    Names:

    * ``"open_es"``: :func:`eggroll.open_es` (OpenAI-ES) on the ``(D,)`` vector.
    * ``"eggroll"``: :func:`eggroll.eggroll` with the vector viewed as the most
      square ``(a, b)`` matrix (10-D: 2 x 5) and rank-``rank`` perturbations
      (on a plain vector EGGROLL would be OpenAI-ES).
    * ``"cma_es"``: evosax ``CMA_ES`` (initial step size 2, default population
      ``4 + floor(3 ln D)``).
    * ``"evosax_open_es"``: evosax ``Open_ES`` with the same schedule as ``open_es``.
    * ``"evosax:<Class>"``: any other evosax 0.3 algorithm with its defaults
      (e.g. ``"evosax:SNES"``).

    The OpenAI-ES-type methods use Adam with a learning rate and a noise scale that
    decay geometrically by 1000x over the run (defaults: ``lr = 0.3``,
    ``sigma = 1.0``, population ``2 (4 + floor(3 ln D))``).

    Raises:
        ValueError: for an unknown name, or when the eggroll strategies are missing.
    """
    import optax

    d = int(dimension)
    if name == "cma_es" or name == "evosax:CMA_ES":
        from evosax.algorithms import CMA_ES

        n = population_size or 4 + int(3 * math.log(d))
        es = CMA_ES(population_size=n, solution=jnp.zeros(d))
        params = _jit_params(es).replace(std_init=sigma if sigma is not None else 2.0)
        return Competitor("cma_es", es, params, jnp.zeros(d), lambda pop: pop, n)
    n = population_size or _default_es_popsize(d)
    if n % 2:
        n += 1
    gens = max(budget // n, 1)
    sig = 1.0 if sigma is None else float(sigma)
    lr = 0.3 if learning_rate is None else float(learning_rate)
    if name in ("open_es", "eggroll"):
        try:
            import eggroll as eg
        except ImportError as err:  # pragma: no cover - the package is this one
            raise ValueError(f"Strategy {name!r} needs eggroll.{name}, which is not importable: {err}") from err
        factory = getattr(eg, name, None)
        if factory is None:
            raise ValueError(f"Strategy {name!r} is not available in this eggroll build (no eggroll.{name}).")
        decay = 1e-3 ** (1.0 / gens)
        opt = optax.adam(_annealed(lr, gens))
        if name == "open_es":
            template = jnp.zeros(d)
            es = factory(population_size=n, solution=template, optimizer=opt, sigma_init=sig)
        else:
            template = jnp.zeros(_factor_shape(d))
            es = factory(population_size=n, solution=template, optimizer=opt, sigma_init=sig, rank=rank)
        params = es.default_params.replace(sigma_decay=decay)
        materialize = es.materialize
        return Competitor(name, es, params, template, lambda pop: materialize(pop).reshape((n, d)), n)
    if name == "evosax_open_es":
        from evosax.algorithms import Open_ES

        es = Open_ES(
            population_size=n,
            solution=jnp.zeros(d),
            optimizer=optax.adam(_annealed(lr, gens)),
            std_schedule=_annealed(sig, gens),
        )
        return Competitor(name, es, _jit_params(es), jnp.zeros(d), lambda pop: pop, n)
    if name.startswith("evosax:"):
        import evosax.algorithms as algos

        cls = getattr(algos, name.split(":", 1)[1], None)
        if cls is None or not isinstance(cls, type):
            raise ValueError(
                f"Unknown evosax algorithm {name!r}: use a class of evosax.algorithms, e.g. 'evosax:SNES'."
            )
        n = population_size or 4 + int(3 * math.log(d))
        es = cls(population_size=n, solution=jnp.zeros(d))
        return Competitor(name.split(":", 1)[1], es, _jit_params(es), jnp.zeros(d), lambda pop: pop, n)
    raise ValueError(
        f"Unknown strategy {name!r}: use one of {', '.join(BUILTIN_STRATEGIES)}, 'evosax:<Class>', "
        "or pass a callable (dimension, budget) -> Competitor."
    )


BUILTIN_STRATEGIES: tuple[str, ...] = ("open_es", "eggroll", "cma_es", "evosax_open_es")

StrategyArg = str | Callable[[int, int], Competitor]


@dataclasses.dataclass
class BenchmarkResult:
    """Everything a run recorded.

    Attributes:
        records: one dict per (strategy, function, instance, dimension) run with
            ``strategy, function, instance, dimension, population_size, budget,
            evaluations, final_delta`` (best ``f - fopt`` seen), ``best_target``
            (smallest of the 51 targets reached, ``nan`` if none),
            ``evals_to_best_target``, ``evals_to_1e-8`` (``nan`` if not reached).
        hits: per strategy and dimension, an int array ``(P, 51)`` of the
            evaluation at which each target was first reached (``-1``: never).
        problems: per dimension, the ``(function, instance)`` list.
        budgets: per dimension, the evaluation budget.
        files: paths written (tables, plot, COCO data folder).
        seconds: wall time per (strategy, dimension) (summed over the legs of a resumed run).
        step: chunks completed over all runs (the checkpoint and metrics step).
        interrupted: ``"SIGTERM"`` / ``"SIGINT"`` if a signal stopped the run
            (a checkpoint was saved; no output files were written), else ``""``.
        stopped_at: where an interrupted run stopped, in words.
        resumed_from: the checkpoint step this run continued from (``None``: a fresh run).
        checkpoint_dir: where checkpoints went (``None``: none).
    """

    records: list[dict[str, Any]]
    hits: dict[tuple[str, int], np.ndarray]
    problems: dict[int, list[tuple[int, int]]]
    budgets: dict[int, int]
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    seconds: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict)
    step: int = 0
    interrupted: str = ""
    stopped_at: str = ""
    resumed_from: int | None = None
    checkpoint_dir: Path | None = None

    @property
    def strategies(self) -> list[str]:
        """Strategy names in run order."""
        seen: dict[str, None] = {}
        for name, _ in self.hits:
            seen[name] = None
        return list(seen)


def _strong(a: jax.Array) -> jax.Array:
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return a
    return jax.lax.convert_element_type(a, a.dtype)


def _initial_means(key: jax.Array, n_problems: int, d: int, x0: str) -> jax.Array:
    if x0 == "origin":
        return jnp.zeros((n_problems, d))
    if x0 == "uniform":
        return jax.random.uniform(key, (n_problems, d), minval=-4.0, maxval=4.0)
    raise ValueError(f"Unknown x0 {x0!r}: use 'uniform' (random in [-4, 4]^D) or 'origin'.")


def _make_chunk(comp: Competitor, suite: BBOBSuite, gens: int, size: int, keep_points: bool) -> Callable:
    es, params, to_points = comp.strategy, comp.params, comp.to_points
    groups = suite.groups
    n = comp.population_size

    def generation(carry, xs):
        key, active = xs
        new, out = _generation(carry, key)
        # padded generations (the last chunk is padded to a full one, to compile once) change nothing
        carry = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, carry)
        return carry, out

    def _generation(carry, key):
        states, best, hits, evals, data = carry
        n_prob = best.shape[0]
        k_ask, k_tell = jax.random.split(key)
        ask_keys = jax.random.split(k_ask, n_prob)
        tell_keys = jax.random.split(k_tell, n_prob)
        pop, states = jax.vmap(es.ask, in_axes=(0, 0, None))(ask_keys, states, params)
        x = jax.vmap(to_points)(pop)
        delta = suite_evaluate(data, x, groups, shared=False, subtract_fopt=True)
        delta = jnp.where(jnp.isnan(delta), jnp.inf, delta)
        states, _ = jax.vmap(es.tell, in_axes=(0, 0, 0, 0, None))(tell_keys, pop, delta, states, params)
        targets = jnp.asarray(TARGETS, delta.dtype)
        below = delta[:, None, :] <= targets[None, :, None]  # (P, T, N)
        first = jnp.argmax(below, axis=-1).astype(jnp.int32)
        reached = jnp.any(below, axis=-1)
        hits = jnp.where((hits < 0) & reached, evals + first + 1, hits)
        best = jnp.minimum(best, jnp.min(delta, axis=1))
        out = x if keep_points else None
        return (states, best, hits, evals + n, data), out

    @jax.jit
    def chunk(carry, run_key, first_generation):
        index = first_generation + jnp.arange(size)
        keys = jax.vmap(lambda i: jax.random.fold_in(run_key, i))(index)
        return jax.lax.scan(generation, carry, (keys, index < gens))

    return chunk


def _resolve(strategy: StrategyArg | Competitor, d: int, budget: int) -> Competitor:
    if isinstance(strategy, Competitor):
        return strategy
    if isinstance(strategy, str):
        return make_competitor(strategy, d, budget)
    if callable(strategy):
        comp = strategy(d, budget)
        if not isinstance(comp, Competitor):
            raise ValueError(f"A strategy callable must return a Competitor, got {type(comp).__name__}.")
        return comp
    raise ValueError(f"Cannot use {strategy!r} as a strategy: give a name, a Competitor or a callable.")


def run_benchmark(
    strategies: Sequence[StrategyArg | Competitor] | str,
    functions: str | Iterable[int] = "1-24",
    dimensions: str | Iterable[int] = (2, 10),
    instances: str | Iterable[int] = "1-5",
    budget_multiplier: float = 1000.0,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
    x0: str = "uniform",
    chunk_generations: int = 50,
    coco_observer: bool = False,
    progress: bool = True,
    plot: bool = True,
    x64: bool = False,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    log_dir: str | Path | None = None,
) -> BenchmarkResult:
    """Runs strategies on BBOB problems with a budget of ``budget_multiplier * D`` evaluations.

    The (strategy, dimension) *runs* go in order: dimensions outer, strategies
    inner. Each run is a sequence of chunks of ``chunk_generations``
    generations; the chunks of all runs are numbered 1, 2, ... in that order (the
    *step*, used by checkpoints and metrics).

    With ``checkpoint_dir`` the runner saves (orbax, via
    :class:`eggroll.checkpoint.Checkpointer`) the finished runs (their runtimes
    and best values) and, inside a run, the scan carry (the strategy states of
    all problems, best-so-far values, target hits, evaluation count) with the run
    key: at the end of every run, every ``checkpoint_every`` steps, and after the
    current chunk when SIGTERM / Ctrl-C arrives (the run then stops and returns
    with ``interrupted`` set). ``resume=True`` continues from the newest
    checkpoint: finished runs are not recomputed, and the results are identical,
    bit for bit, to those of an uninterrupted run.

    Args:
        strategies: names (see :func:`make_competitor`), :class:`Competitor` s,
            callables ``(dimension, budget) -> Competitor``, or a comma-separated string.
        functions: function ids or a spec like ``"1-24"``.
        dimensions: dimensions or a spec like ``"2,10"``.
        instances: COCO instance ids or a spec like ``"1-5"``.
        budget_multiplier: evaluations per dimension (COCO's convention).
        out_dir: where to write ``bbob_results.csv``, ``bbob_results.md``,
            ``bbob_runtimes.npz``, ``bbob_ecdf.png`` (and ``coco/`` with the
            observer); nothing is written if ``None`` or if the run was interrupted.
        seed: seeds the initial means and the strategies' keys.
        x0: initial mean: ``"uniform"`` in ``[-4, 4]^D`` (one draw per problem,
            shared by all strategies) or ``"origin"``.
        chunk_generations: generations per compiled call (progress, metrics and
            checkpoint granularity).
        coco_observer: also log every evaluated point through a
            ``cocoex.Observer("bbob", ...)`` into ``out_dir/coco`` (readable by
            ``cocopp``); the points are replayed through cocoex after each run.
            Cannot be combined with ``resume`` (checkpoints do not hold the points).
        progress: show a rich progress display.
        plot: draw the ECDF figure (needs ``out_dir``).
        x64: run in float64 (``jax.enable_x64``): the functions and evosax strategies then
            compute in double precision (eggroll's strategies keep float32 noise and means).
        checkpoint_dir: where checkpoints go (``None``: none). A fresh run
            (``resume=False``) refuses a directory that already holds checkpoints.
        checkpoint_every: also save every this many steps (chunks), besides the
            end of each run and interruptions (``None``: only those).
        resume: continue from the newest checkpoint in ``checkpoint_dir``; the
            settings (strategies, functions, dimensions, instances, budget, seed,
            x0, chunk size, x64) must be those of the checkpointed run.
        log_dir: write one metrics row per chunk there
            (:class:`eggroll.logging.MetricsLogger`; numeric columns only, see the
            docs); on resume the rows after the checkpoint are dropped first.

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        ValueError: for unknown strategies, ids or dimensions, a budget too
            small for one generation, a fresh run into a directory holding
            checkpoints, or a resume with other settings.
        eggroll.checkpoint.CheckpointError: no usable checkpoint to resume from.
    """
    if x64 and not jax.config.jax_enable_x64:
        with jax.enable_x64(True):
            return run_benchmark(
                strategies,
                functions,
                dimensions,
                instances,
                budget_multiplier,
                out_dir=out_dir,
                seed=seed,
                x0=x0,
                chunk_generations=chunk_generations,
                coco_observer=coco_observer,
                progress=progress,
                plot=plot,
                x64=True,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every,
                resume=resume,
                log_dir=log_dir,
            )
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    strategies = list(strategies)
    if not strategies:
        raise ValueError("run_benchmark() needs at least one strategy, e.g. ['cma_es'].")
    dims = parse_ids(dimensions)
    if budget_multiplier <= 0:
        raise ValueError(f"budget_multiplier must be positive, got {budget_multiplier}.")
    if coco_observer and out_dir is None:
        raise ValueError("coco_observer=True needs an out_dir to write COCO's data into.")
    if coco_observer and not set(dims) <= set(COCO_DIMENSIONS):
        raise ValueError(
            f"COCO's observer only logs the bbob suite's dimensions {COCO_DIMENSIONS}, got {dims}: "
            "drop the others or run without coco_observer."
        )
    if chunk_generations < 1:
        raise ValueError(f"chunk_generations must be >= 1, got {chunk_generations}.")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of chunks (or None), got {checkpoint_every}.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the checkpoints of the run to continue).")
    if resume and coco_observer:
        raise ValueError(
            "--coco cannot be combined with --resume: COCO's observer replays every point a run evaluated, and "
            "checkpoints do not store them. Resume without --coco (the tables, runtimes and ECDF are complete; "
            "<out>/coco then holds only the runs finished before the stop), or rerun with --coco into a new --out."
        )
    suites = {d: BBOBSuite(functions, instances, d) for d in dims}  # validates ids and dims up front
    out = Path(out_dir) if out_dir is not None else None
    config = _config_record(strategies, suites, dims, budget_multiplier, seed, x0, chunk_generations, x64)
    runs = [(d, si) for d in dims for si in range(len(strategies))]
    key = jax.random.key(seed)
    result = BenchmarkResult(records=[], hits={}, problems={}, budgets={})
    for d in dims:
        result.problems[d] = list(suites[d].problems)
        result.budgets[d] = int(budget_multiplier * d)
    prepared: dict[int, _Run] = {}

    def prepare(i: int) -> _Run:
        if i not in prepared:
            d, si = runs[i]
            means = _initial_means(jax.random.fold_in(key, d), len(suites[d]), d, x0)
            budget = result.budgets[d]
            run = _prepare_run(
                strategies[si], suites[d], means, key, budget, budget_multiplier, chunk_generations, coco_observer
            )
            prepared[i] = run
        return prepared[i]

    ckpt = None
    position = {"run": 0, "chunk": 0, "step": 0, "seconds": 0.0}
    completed: list[dict[str, Any]] = []  # JSON description of the finished runs, in order
    done_arrays: dict[str, dict[str, np.ndarray]] = {}  # their hits and best values
    current: dict[str, Any] | None = None  # the restored carry of an unfinished run
    if checkpoint_dir is not None:
        from eggroll.checkpoint import Checkpointer

        ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every, max_to_keep=2)
        try:
            ckpt.refuse_fresh_run(resume, "a benchmark run")
            if resume:
                meta = ckpt.read_meta()
                _check_config(ckpt.directory, meta.get("config"), config)
                position, completed = dict(meta["position"]), list(meta["completed"])
                template: dict[str, Any] = {}
                if completed:
                    fdtype = np.dtype(jnp.asarray(1.0).dtype)
                    template["completed"] = {
                        _run_key(j): {
                            "hits": np.zeros((len(suites[runs[j][0]]), TARGETS.size), np.int32),
                            "best": np.zeros((len(suites[runs[j][0]]),), fdtype),
                        }
                        for j in range(len(completed))
                    }
                if position["chunk"] > 0:
                    run = prepare(position["run"])
                    template["current"] = {"carry": run.carry[:4], "key": run.key}
                items, _ = ckpt.restore(template)
                current = items.get("current")
                for j, entry in enumerate(completed):
                    arrays = items["completed"][_run_key(j)]
                    hits, best = np.asarray(arrays["hits"]), np.asarray(arrays["best"])
                    done_arrays[_run_key(j)] = {"hits": hits, "best": best}
                    _add_run(result, entry, suites[entry["dimension"]], hits, best)
                result.resumed_from = int(position["step"])
        except BaseException:
            ckpt.close()
            raise
        result.checkpoint_dir = ckpt.directory

    def save(step: int, run: int, chunk: int, seconds: float, carry: Any = None, run_key: Any = None) -> None:
        if ckpt is None:
            return
        items: dict[str, Any] = {}
        if done_arrays:
            items["completed"] = dict(done_arrays)
        if carry is not None:
            items["current"] = {"carry": carry[:4], "key": run_key}
        meta = {
            "config": config,
            "position": {"run": run, "chunk": chunk, "step": step, "seconds": seconds},
            "completed": completed,
            "runs": len(runs),
        }
        ckpt.save(step, items, meta)

    logger = None
    if log_dir is not None:
        from eggroll.logging import MetricsLogger

        logger = MetricsLogger(log_dir)
        logger.truncate(int(position["step"]) + 1)  # a resumed run rewrites the steps after its checkpoint
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    observers: dict[str, Any] = {}
    step = int(position["step"])
    from eggroll.checkpoint import GracefulInterrupt

    try:
        # without checkpoints there is nothing to save: signals keep their usual effect
        watched = (signal.SIGTERM, signal.SIGINT) if ckpt is not None else ()
        with _Progress(progress) as bar, GracefulInterrupt(watched) as signals:
            for i, (d, si) in enumerate(runs):
                if i < position["run"]:
                    continue  # finished before the checkpoint: restored above
                if signals.requested is not None:
                    result.interrupted = signals.signal_name
                    result.stopped_at = f"before the {_ordinal(i + 1)} of {len(runs)} runs"
                    break
                run = prepare(i)
                comp, suite = run.comp, suites[d]
                carry, run_key = run.carry, run.key
                chunk0, seconds0 = 0, 0.0
                if i == position["run"] and current is not None:
                    carry = (*current["carry"], carry[4])  # the problem data is not saved: it is rebuilt
                    run_key, chunk0, seconds0 = current["key"], int(position["chunk"]), float(position["seconds"])
                n, gens, size = comp.population_size, run.generations, run.size
                n_prob = len(suite)
                task = bar.add(f"{comp.name} {d}-D ({n_prob} problems)", gens)
                if chunk0:
                    bar.update(task, min(chunk0 * size, gens), "resumed")
                points: list[np.ndarray] = []
                c = chunk0
                t_run = time.perf_counter()
                while c < run.chunks:
                    t0 = time.perf_counter()
                    with jax.numpy_rank_promotion("allow"):  # third-party strategies (evosax) broadcast implicitly
                        carry, xs = run.chunk(carry, run_key, c * size)
                    best, hits = np.asarray(carry[1]), np.asarray(carry[2])
                    seconds = time.perf_counter() - t0
                    advance = min((c + 1) * size, gens) - c * size
                    c += 1
                    step += 1
                    if coco_observer:
                        points.append(np.asarray(xs)[:advance])  # (generations, P, N, D)
                    if logger is not None:
                        logger.log(
                            step, _metrics_row(i, si, d, c, min(c * size, gens), n, best, hits, seconds, advance)
                        )
                    bar.update(
                        task,
                        advance,
                        f"median best f-fopt {np.median(best):.2e}, targets hit {np.mean(hits >= 0):.0%}",
                    )
                    if c < run.chunks and (signals.requested is not None or (ckpt and ckpt.should_save(step))):
                        save(step, i, c, seconds0 + time.perf_counter() - t_run, carry, run_key)
                        if signals.requested is not None:
                            break
                if c < run.chunks:
                    result.interrupted = signals.signal_name
                    result.stopped_at = (
                        f"{comp.name} {d}-D, generation {c * size} of {gens}, run {i + 1} of {len(runs)}"
                    )
                    break
                hits, best = np.asarray(carry[2]), np.asarray(carry[1])
                entry = {
                    "strategy": comp.name,
                    "dimension": d,
                    "population_size": n,
                    "generations": gens,
                    "budget": result.budgets[d],
                    "seconds": seconds0 + time.perf_counter() - t_run,
                }
                completed.append(entry)
                done_arrays[_run_key(i)] = {"hits": hits, "best": best}
                _add_run(result, entry, suite, hits, best)
                if coco_observer and out is not None:
                    if comp.name not in observers:
                        observers[comp.name] = _coco_observer(out / "coco", comp.name)
                    _replay_coco(observers[comp.name], comp.name, suite, points, bar)
                save(step, i + 1, 0, 0.0)  # a finished run is never recomputed
                del prepared[i], carry, points
    finally:
        if logger is not None:
            logger.close()
        if ckpt is not None:
            ckpt.close()
    observers.clear()  # finalises COCO's files
    result.step = step
    if out is not None and not result.interrupted:
        from eggroll.problems.bbob import report

        result.files.update(report.write_tables(result, out))
        if plot:
            result.files["ecdf"] = report.plot_ecdf(result, out / "bbob_ecdf.png")
        if coco_observer:
            result.files["coco"] = out / "coco"
    return result


_OPTION = {
    "strategies": "--strategies",
    "functions": "--functions",
    "dimensions": "--dims",
    "instances": "--instances",
    "budget_multiplier": "--budget",
    "seed": "--seed",
    "x0": "--x0",
    "chunk_generations": "--chunk-generations",
    "x64": "--x64",
}


def _strategy_label(strategy: StrategyArg | Competitor) -> str:
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, Competitor):
        return f"Competitor({strategy.name})"
    return f"{getattr(strategy, '__module__', '?')}.{getattr(strategy, '__qualname__', type(strategy).__name__)}"


def _config_record(
    strategies: Sequence[StrategyArg | Competitor],
    suites: dict[int, BBOBSuite],
    dims: list[int],
    budget_multiplier: float,
    seed: int,
    x0: str,
    chunk_generations: int,
    x64: bool,
) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (JSON-ready)."""
    problems = suites[dims[0]].problems
    return {
        "strategies": [_strategy_label(s) for s in strategies],
        "functions": sorted({f for f, _ in problems}),
        "instances": sorted({i for _, i in problems}),
        "dimensions": [int(d) for d in dims],
        "budget_multiplier": float(budget_multiplier),
        "seed": int(seed),
        "x0": str(x0),
        "chunk_generations": int(chunk_generations),
        "x64": bool(x64),
    }


def _check_config(directory: Path, saved: dict[str, Any] | None, wanted: dict[str, Any]) -> None:
    from eggroll.checkpoint import CheckpointError, check_settings

    if saved is None:
        raise CheckpointError(
            f"The checkpoint in {directory} has no benchmark settings; it was not written by run_benchmark. "
            "Choose another --out to start a new run."
        )
    check_settings(saved, wanted, directory, may_change="--progress and --checkpoint-every", names=_OPTION)


def _run_key(i: int) -> str:
    return f"run{i}"


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _metrics_row(
    run: int,
    strategy_index: int,
    d: int,
    chunk: int,
    generations: int,
    n: int,
    best: np.ndarray,
    hits: np.ndarray,
    seconds: float,
    advance: int,
) -> dict[str, float | int]:
    """One metrics row (numbers only: :class:`~eggroll.logging.MetricsLogger` drops strings)."""
    return {
        "run": run,
        "strategy_index": strategy_index,
        "dimension": d,
        "chunk": chunk,
        "run_generations": generations,
        "evaluations": generations * n,
        "median_delta": float(np.median(best)),
        "best_delta": float(np.min(best)),
        "targets_reached": float(np.mean(hits >= 0)),
        "solved_1e-8": float(np.mean(hits[:, -1] >= 0)),
        "seconds": seconds,
        "evals_per_s": advance * n * best.shape[0] / max(seconds, 1e-9),
    }


def _add_run(result: BenchmarkResult, entry: dict[str, Any], suite: BBOBSuite, hits: np.ndarray, best: np.ndarray):
    """Adds a finished (strategy, dimension) run to ``result``: its hits, seconds and one record per problem."""
    name, d, n = entry["strategy"], int(entry["dimension"]), int(entry["population_size"])
    result.hits[(name, d)] = hits
    result.seconds[(name, d)] = float(entry["seconds"])
    for k, (f, i) in enumerate(suite.problems):
        reached = np.nonzero(hits[k] >= 0)[0]
        best_t = int(reached.max()) if reached.size else -1
        result.records.append(
            {
                "strategy": name,
                "function": f,
                "instance": i,
                "dimension": d,
                "population_size": n,
                "budget": int(entry["budget"]),
                "evaluations": int(entry["generations"]) * n,
                "final_delta": float(best[k]),
                "best_target": float(TARGETS[best_t]) if best_t >= 0 else float("nan"),
                "evals_to_best_target": int(hits[k, best_t]) if best_t >= 0 else -1,
                "evals_to_1e-8": int(hits[k, -1]) if hits[k, -1] >= 0 else -1,
            }
        )


@dataclasses.dataclass
class _Run:
    """One (strategy, dimension) run, ready to go: the competitor, the compiled chunk and the initial carry."""

    comp: Competitor
    generations: int
    size: int
    chunks: int
    chunk: Callable
    carry: tuple
    key: jax.Array


def _prepare_run(
    strategy: StrategyArg | Competitor,
    suite: BBOBSuite,
    means: jax.Array,
    key: jax.Array,
    budget: int,
    budget_multiplier: float,
    chunk_generations: int,
    keep_points: bool,
) -> _Run:
    d = suite.dimension
    comp = _resolve(strategy, d, budget)
    n = comp.population_size
    gens = budget // n
    if gens < 1:
        raise ValueError(
            f"Budget {budget} evaluations ({budget_multiplier} x {d}) is smaller than one "
            f"generation of {comp.name} ({n} members): raise the budget."
        )
    n_prob = len(suite)
    data = suite.device_data()
    seed_key = jax.random.fold_in(key, zlib.crc32(comp.name.encode()) % (2**31))
    size = min(chunk_generations, gens)

    @jax.jit
    def start(seed_key, means, params, data):
        # everything before the first generation in one compiled call (eager ops each compile on CPU)
        k_init, k_run = jax.random.split(seed_key)
        init_means = means.reshape((n_prob, *comp.template.shape)).astype(comp.template.dtype)
        states = jax.vmap(comp.strategy.init, in_axes=(0, 0, None))(
            jax.random.split(k_init, n_prob), init_means, params
        )
        carry = (
            states,
            jnp.full((n_prob,), jnp.inf, data.fopt.dtype),
            jnp.full((n_prob, TARGETS.size), -1, jnp.int32),
            jnp.zeros((), jnp.int32),
            data,
        )
        # strong types, as the scan in `chunk` returns them (a weak-typed carry would compile chunk twice)
        return jax.tree.map(_strong, carry), k_run

    with jax.numpy_rank_promotion("allow"):  # third-party strategies (evosax) rely on implicit broadcasting
        carry, k_run = start(seed_key, means, comp.params, data)
    chunk = _make_chunk(comp, suite, gens, size, keep_points)
    return _Run(comp, gens, size, -(-gens // size), chunk, carry, k_run)


def _coco_observer(folder: Path, name: str) -> Any:
    """A ``cocoex.Observer("bbob")`` writing into ``folder/<name>`` (one folder per algorithm)."""
    import cocoex

    cocoex.log_level("warning")
    folder.mkdir(parents=True, exist_ok=True)
    outer = str(folder.resolve())
    if " " in outer or " " in name:
        raise ValueError(f"COCO's observer options cannot hold spaces: {outer!r}, {name!r}; choose another out_dir.")
    return cocoex.Observer("bbob", f"outer_folder: {outer} result_folder: {name} algorithm_name: {name}")


def _replay_coco(observer: Any, name: str, suite: BBOBSuite, points: list[np.ndarray], bar: _Progress) -> None:
    """Feeds every evaluated point, in order, through the observed cocoex problem."""
    import cocoex

    allx = np.concatenate(points, axis=0) if points else np.zeros((0, len(suite), 1, suite.dimension))
    fids = ",".join(str(f) for f in sorted({f for f, _ in suite.problems}))
    iids = ",".join(str(i) for i in sorted({i for _, i in suite.problems}))
    coco_suite = cocoex.Suite("bbob", f"instances: {iids}", f"function_indices: {fids} dimensions: {suite.dimension}")
    task = bar.add(f"COCO data {name} {suite.dimension}-D", len(suite))
    for k, (f, i) in enumerate(suite.problems):
        prob = coco_suite.get_problem_by_function_dimension_instance(f, suite.dimension, i, observer)
        for x in allx[:, k].reshape(-1, suite.dimension).astype(np.float64):
            prob(x)
        prob.free()
        bar.update(task, 1, "")


class _Progress:
    """A thin wrapper over ``rich.progress`` that can be switched off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def add(self, description: str, total: int) -> int:
        if self._progress is None:
            return 0
        return self._progress.add_task(description, total=total, info="")

    def update(self, task: int, advance: int, info: str) -> None:
        if self._progress is not None:
            self._progress.update(task, advance=advance, info=info)
