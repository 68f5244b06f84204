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
"""

from __future__ import annotations

import dataclasses
import math
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
        seconds: wall time per (strategy, dimension).
    """

    records: list[dict[str, Any]]
    hits: dict[tuple[str, int], np.ndarray]
    problems: dict[int, list[tuple[int, int]]]
    budgets: dict[int, int]
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    seconds: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict)

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
) -> BenchmarkResult:
    """Runs strategies on BBOB problems with a budget of ``budget_multiplier * D`` evaluations.

    Args:
        strategies: names (see :func:`make_competitor`), :class:`Competitor` s,
            callables ``(dimension, budget) -> Competitor``, or a comma-separated string.
        functions: function ids or a spec like ``"1-24"``.
        dimensions: dimensions or a spec like ``"2,10"``.
        instances: COCO instance ids or a spec like ``"1-5"``.
        budget_multiplier: evaluations per dimension (COCO's convention).
        out_dir: where to write ``bbob_results.csv``, ``bbob_results.md``,
            ``bbob_runtimes.npz``, ``bbob_ecdf.png`` (and ``coco/`` with the
            observer); nothing is written if ``None``.
        seed: seeds the initial means and the strategies' keys.
        x0: initial mean: ``"uniform"`` in ``[-4, 4]^D`` (one draw per problem,
            shared by all strategies) or ``"origin"``.
        chunk_generations: generations per compiled call (progress granularity).
        coco_observer: also log every evaluated point through a
            ``cocoex.Observer("bbob", ...)`` into ``out_dir/coco`` (readable by
            ``cocopp``); the points are replayed through cocoex after each run.
        progress: show a rich progress display.
        plot: draw the ECDF figure (needs ``out_dir``).
        x64: run in float64 (``jax.enable_x64``): the functions and evosax strategies then
            compute in double precision (eggroll's strategies keep float32 noise and means).

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        ValueError: for unknown strategies, ids or dimensions, or a budget too
            small for one generation.
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
            )
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
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
    suites = {d: BBOBSuite(functions, instances, d) for d in dims}  # validates ids and dims up front
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    result = BenchmarkResult(records=[], hits={}, problems={}, budgets={})
    targets_np = TARGETS
    observers: dict[str, Any] = {}
    with _Progress(progress) as bar:
        for d in dims:
            suite = suites[d]
            budget = int(budget_multiplier * d)
            result.problems[d] = list(suite.problems)
            result.budgets[d] = budget
            key = jax.random.key(seed)
            means = _initial_means(jax.random.fold_in(key, d), len(suite), d, x0)
            for strategy in strategies:
                comp = _resolve(strategy, d, budget)
                n = comp.population_size
                gens = budget // n
                if gens < 1:
                    raise ValueError(
                        f"Budget {budget} evaluations ({budget_multiplier} x {d}) is smaller than one "
                        f"generation of {comp.name} ({n} members): raise the budget."
                    )
                t0 = time.perf_counter()
                hits, best, points = _run_one(comp, suite, means, gens, key, chunk_generations, coco_observer, bar, d)
                result.seconds[(comp.name, d)] = time.perf_counter() - t0
                result.hits[(comp.name, d)] = hits
                for k, (f, i) in enumerate(suite.problems):
                    reached = np.nonzero(hits[k] >= 0)[0]
                    best_t = int(reached.max()) if reached.size else -1
                    result.records.append(
                        {
                            "strategy": comp.name,
                            "function": f,
                            "instance": i,
                            "dimension": d,
                            "population_size": n,
                            "budget": budget,
                            "evaluations": gens * n,
                            "final_delta": float(best[k]),
                            "best_target": float(targets_np[best_t]) if best_t >= 0 else float("nan"),
                            "evals_to_best_target": int(hits[k, best_t]) if best_t >= 0 else -1,
                            "evals_to_1e-8": int(hits[k, -1]) if hits[k, -1] >= 0 else -1,
                        }
                    )
                if coco_observer and out is not None:
                    if comp.name not in observers:
                        observers[comp.name] = _coco_observer(out / "coco", comp.name)
                    _replay_coco(observers[comp.name], comp.name, suite, points, bar)
    observers.clear()  # finalises COCO's files
    if out is not None:
        from eggroll.problems.bbob import report

        result.files.update(report.write_tables(result, out))
        if plot:
            result.files["ecdf"] = report.plot_ecdf(result, out / "bbob_ecdf.png")
        if coco_observer:
            result.files["coco"] = out / "coco"
    return result


def _run_one(
    comp: Competitor,
    suite: BBOBSuite,
    means: jax.Array,
    gens: int,
    key: jax.Array,
    chunk_generations: int,
    keep_points: bool,
    bar: _Progress,
    d: int,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
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
    task = bar.add(f"{comp.name} {d}-D ({n_prob} problems)", gens)
    points: list[np.ndarray] = []
    done = 0
    while done < gens:
        with jax.numpy_rank_promotion("allow"):
            carry, xs = chunk(carry, k_run, done)
        step = min(size, gens - done)
        done += step
        if keep_points:
            points.append(np.asarray(xs)[:step])  # (generations, P, N, D)
        hits = np.asarray(carry[2])
        best = np.asarray(carry[1])
        bar.update(
            task,
            step,
            f"median best f-fopt {np.median(best):.2e}, targets hit {np.mean(hits >= 0):.0%}",
        )
    return np.asarray(carry[2]), np.asarray(carry[1]), points


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
