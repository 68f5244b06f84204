"""``eggroll bbob`` as a task of the one loop: any eggroll or evosax strategy on chosen BBOB problems.

The problems come from one of COCO's suites (``suite=``): ``bbob``, ``bbob-noisy``, ``bbob-largescale``
or ``bbob-mixint`` (see :class:`~eggroll.problems.bbob.suite.BBOBSuite`).

The benchmark is a sequence of (strategy, dimension) *runs* (dimensions outer,
strategies inner). A run evaluates every (function, instance) problem of its
dimension *at once*: the strategy state is ``vmap``-ed over the problems, each
generation asks every problem's population, evaluates them all with one grouped
:func:`~eggroll.problems.bbob.suite.suite_evaluate` call and tells every state.
Generations run in ``lax.scan`` chunks (one compiled call per chunk); the chunks
of all runs, numbered 1, 2, ... in order, are the generations of
:func:`eggroll.run.loop.run` (its checkpoints, metrics rows, progress and stop
rules count them).

Runtimes are recorded the way COCO defines them: for each of the 51 targets
``f - fopt <= 10^k`` (``k = 2, 1.8, ..., -8``), the number of the first function
evaluation (counting members in population order) whose value reached it.

Every reported ``f - fopt`` (runtimes, best values, CSV, tables, ECDF) comes from one
float64 evaluation of the points the strategies proposed, after each chunk (inside
``jax.enable_x64``, also when the strategies run in float32): float32 evaluation has a
noise floor of 1e-7..3e-4 on f16-20, f23 and f24, below the targets. COCO's observer
evaluates the same points in float64, so its data and the CSV agree.

Every (strategy, dimension, function, instance) problem draws its random numbers (initial
mean, the strategy's keys) from a key folded from the seed and that identity, so a problem
gives the same result alone and in a larger run.

Strategies are told ``f - fopt`` instead of ``f``: the two differ by a constant
per problem, to which every strategy here is invariant (they rank or
standardise fitness), and ``f - fopt`` keeps full precision in float32 where
``f`` (with ``|fopt|`` up to 1000) would not.

The carry holds every run's scan state (strategy states of all problems,
best-so-far values, target hits, evaluation count, run key), so a resume
restores the finished runs' results and the run under way bit for bit.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.problems.bbob import LARGESCALE_DIMENSIONS, MIXINT_DIMENSIONS, SUITES
from eggroll.problems.bbob.suite import BBOBSuite, parse_ids, suite_evaluate
from eggroll.run.loop import RunOptions, RunResult, Task, run

__all__ = [
    "BBOBTask",
    "BUILTIN_STRATEGIES",
    "BenchmarkResult",
    "COCO_DIMENSIONS",
    "Competitor",
    "SUITE_DIMENSIONS",
    "SUITE_FUNCTIONS",
    "TARGETS",
    "make_competitor",
    "run_benchmark",
]

COCO_DIMENSIONS: tuple[int, ...] = (2, 3, 5, 10, 20, 40)
"""Dimensions of COCO's ``bbob`` suite (the only ones its observer can log)."""

SUITE_DIMENSIONS: dict[str, tuple[int, ...]] = dict(
    zip(SUITES, (COCO_DIMENSIONS, COCO_DIMENSIONS, LARGESCALE_DIMENSIONS, MIXINT_DIMENSIONS), strict=True)
)
"""Each COCO suite's dimensions (the only ones cocoex's observer logs for it), in the order of ``SUITES``."""

SUITE_FUNCTIONS: dict[str, str] = {suite: "101-130" if suite == "bbob-noisy" else "1-24" for suite in SUITES}
"""Each COCO suite's function ids."""

TARGETS: np.ndarray = 10.0 ** (np.arange(10, -41, -1) / 5.0)
"""COCO's 51 standard precision targets ``10^2 ... 10^-8`` (step ``10^0.2``), bit for bit as COCO's logger and
``cocopp`` compute them, ``10^(k/5)`` (``10 ** linspace(2, -8, 51)`` is one bit smaller for some ``k``, and
``cocopp``'s ``detEvals`` answers a target one bit below its own level with the next, harder, level)."""

BUILTIN_STRATEGIES: tuple[str, ...] = ("open_es", "eggroll", "cma_es", "evosax_open_es")


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


StrategyArg = str | Callable[[int, int], Competitor]


def _factor_shape(d: int) -> tuple[int, int]:
    """The most square ``(a, b)`` with ``a * b == d`` and ``a <= b``."""
    a = max(k for k in range(1, math.isqrt(d) + 1) if d % k == 0)
    return a, d // a


def _jit_params(es: Any) -> Any:
    """``es.default_params`` computed in one compiled call (evosax builds them with many eager ops)."""
    with jax.numpy_rank_promotion("allow"):
        return jax.jit(lambda: es.default_params)()


def _annealed(start: float, generations: int) -> Callable:
    """``start`` decaying geometrically by 1000x over ``generations``."""
    import optax

    return optax.exponential_decay(start, transition_steps=generations, decay_rate=1e-3)


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

    * ``"open_es"``: ``open_es`` of :data:`eggroll.strategies.REGISTRY` (OpenAI-ES) on the ``(D,)`` vector.
    * ``"eggroll"``: ``eggroll`` of the registry with the vector viewed as the most
      square ``(a, b)`` matrix (10-D: 2 x 5) and rank-``rank`` perturbations
      (on a plain vector EGGROLL would be OpenAI-ES).
    * ``"cma_es"``: evosax ``CMA_ES`` (initial step size 2, default population
      ``4 + floor(3 ln D)``).
    * ``"evosax_open_es"``: evosax ``Open_ES`` with the same schedule as ``open_es``.
    * ``"evosax:<Class>"``: any other distribution-based evosax 0.3 algorithm with its defaults
      (e.g. ``"evosax:SNES"``).

    The OpenAI-ES-type methods use Adam with a learning rate and a noise scale that
    decay geometrically by 1000x over the run (defaults: ``lr = 0.3``,
    ``sigma = 1.0``, population ``2 (4 + floor(3 ln D))``, rounded up to even).

    Raises:
        ValueError: for an unknown name.
    """
    d = int(dimension)
    if d < 1:
        raise ValueError(f"dimension must be >= 1, got {dimension}")
    if name in ("open_es", "eggroll", "evosax_open_es"):
        import optax

        n = population_size or 2 * (4 + int(3 * math.log(d)))  # OpenAI-ES-type methods need more members than CMA-ES
        n += n % 2  # antithetic pairs
        gens = max(budget // n, 1)
        sig = 1.0 if sigma is None else float(sigma)
        opt = optax.adam(_annealed(0.3 if learning_rate is None else float(learning_rate), gens))
        if name == "evosax_open_es":
            from evosax.algorithms import Open_ES

            es = Open_ES(population_size=n, solution=jnp.zeros(d), optimizer=opt, std_schedule=_annealed(sig, gens))
            return Competitor(name, es, _jit_params(es), jnp.zeros(d), lambda pop: pop, n)
        from eggroll.strategies import make

        extra = {} if name == "open_es" else {"rank": rank}
        template = jnp.zeros(d) if name == "open_es" else jnp.zeros(_factor_shape(d))
        es = make(name, n, template, optimizer=opt, sigma_init=sig, **extra)
        params = es.default_params.replace(sigma_decay=1e-3 ** (1.0 / gens))
        materialize = es.materialize
        return Competitor(name, es, params, template, lambda pop: materialize(pop).reshape((n, d)), n)
    if name != "cma_es" and not name.startswith("evosax:"):
        raise ValueError(
            f"Unknown strategy {name!r}: use one of {', '.join(BUILTIN_STRATEGIES)}, 'evosax:<Class>', "
            "or pass a callable (dimension, budget) -> Competitor."
        )
    import evosax.algorithms as algos

    cls_name = "CMA_ES" if name == "cma_es" else name.split(":", 1)[1]
    cls = getattr(algos, cls_name, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"Unknown evosax algorithm {name!r}: use a class of evosax.algorithms, e.g. 'evosax:SNES'.")
    from eggroll.strategies.from_evosax import check_distribution_based

    check_distribution_based(cls)
    n = population_size or 4 + int(3 * math.log(d))
    es = cls(population_size=n, solution=jnp.zeros(d))
    params = _jit_params(es)
    if cls_name == "CMA_ES":
        params = params.replace(std_init=sigma if sigma is not None else 2.0)
    return Competitor("cma_es" if cls_name == "CMA_ES" else cls_name, es, params, jnp.zeros(d), lambda pop: pop, n)


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
        step: chunks completed over all runs (the loop's generation).
        interrupted: ``"SIGTERM"`` / ``"SIGINT"`` (or the loop's ``"stop_after"``) if the run was
            stopped that way (a checkpoint was saved; no output files were written), else ``""``.
        stopped_at: where an unfinished benchmark stopped, in words.
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
        return list(dict.fromkeys(name for name, _ in self.hits))


def _strong(a: jax.Array) -> jax.Array:
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return a
    return jax.lax.convert_element_type(a, a.dtype)


def _problem_keys(key: jax.Array, problems: Sequence[tuple[int, int]]) -> jax.Array:
    """One key per (function, instance), folded from ``key``: a problem's randomness does not depend on its batch."""
    fids = jnp.asarray([f for f, _ in problems], jnp.int32)
    iids = jnp.asarray([i for _, i in problems], jnp.int32)
    return jax.vmap(lambda f, i: jax.random.fold_in(jax.random.fold_in(key, f), i))(fids, iids)


def _initial_means(key: jax.Array, problems: Sequence[tuple[int, int]], d: int, x0: str) -> jax.Array:
    """Each problem's initial mean, drawn from its own key (``key`` already folded with the dimension)."""
    if x0 == "origin":
        return jnp.zeros((len(problems), d))
    if x0 == "uniform":
        keys = _problem_keys(key, problems)
        return jax.vmap(lambda k: jax.random.uniform(k, (d,), minval=-4.0, maxval=4.0))(keys)
    raise ValueError(f"Unknown x0 {x0!r}: use 'uniform' (random in [-4, 4]^D) or 'origin'.")


def _split_best(best: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A float64 array as two float32 arrays ``hi + lo`` (about 48 bits; the carry stays float32 without x64)."""
    hi = best.astype(jnp.float32)
    lo = jnp.where(jnp.isfinite(best), best - hi.astype(best.dtype), 0.0).astype(jnp.float32)
    return hi, lo


def joined_best(state: Mapping[str, Any]) -> np.ndarray:
    """A run's best ``f - fopt`` per problem (float64) from its ``best_hi`` / ``best_lo`` carry entries."""
    return np.asarray(state["best_hi"], np.float64) + np.asarray(state["best_lo"], np.float64)


@dataclasses.dataclass
class _Run:
    """One (strategy, dimension) run: the competitor, its schedule and its compiled calls."""

    index: int
    strategy_index: int
    comp: Competitor
    suite: BBOBSuite
    budget: int
    generations: int
    size: int  # generations per chunk
    chunks: int
    start: Callable  # () -> the run's initial carry
    chunk: Callable  # (carry, data, first_generation) -> (carry, points)
    score: Callable  # (carry, float64 data, points, first_generation) -> carry with hits and best (under x64)

    @property
    def problems(self) -> int:
        """The run's real problems (a run of one problem carries a second, padding copy: see :func:`_make_run`)."""
        return len(self.suite)

    @property
    def label(self) -> str:
        return f"{self.comp.name} {self.suite.dimension}-D"


def _make_run(
    index: int,
    strategy_index: int,
    comp: Competitor,
    suite: BBOBSuite,
    means: jax.Array,
    key: jax.Array,
    budget: int,
    chunk_generations: int,
) -> _Run:
    n, d = comp.population_size, suite.dimension
    gens = budget // n
    if gens < 1:
        raise ValueError(
            f"Budget {budget} evaluations ({budget / d:g} x {d}) is smaller than one "
            f"generation of {comp.name} ({n} members): raise the budget."
        )
    es, params, to_points, groups, kind = comp.strategy, comp.params, comp.to_points, suite.groups, suite.suite
    size = min(chunk_generations, gens)
    # one key per problem from (seed, strategy, dimension, function, instance): alone or in a batch, a problem
    # sees the same random numbers
    strategy_key = jax.random.fold_in(jax.random.fold_in(key, zlib.crc32(comp.name.encode()) % (2**31)), d)
    problem_keys = _problem_keys(strategy_key, suite.problems)
    # a run of one problem is run as two copies of it (the second discarded): XLA compiles a batch of one
    # differently (the batch axis is dropped), float32 rounding then differs in the last bit and a strategy
    # drifts away from the same problem's run inside a larger batch
    pad = len(suite) == 1
    n_prob = 2 if pad else len(suite)
    if pad:
        problem_keys = jnp.concatenate([problem_keys, problem_keys])
        means = jnp.concatenate([means, means])
        groups = ((groups[0][0], (0, 1)),)

    def padded(data):
        return jax.tree.map(lambda a: jnp.concatenate([a, a]), data) if pad else data

    @jax.jit
    def start(problem_keys, means, params):
        # everything before the first generation in one compiled call (eager ops each compile on CPU)
        keys = jax.vmap(jax.random.split)(problem_keys)
        init_means = means.reshape((n_prob, *comp.template.shape)).astype(comp.template.dtype)
        states = jax.vmap(es.init, in_axes=(0, 0, None))(keys[:, 0], init_means, params)
        carry = {
            "states": states,
            "best_hi": jnp.full((n_prob,), jnp.inf, jnp.float32),
            "best_lo": jnp.zeros((n_prob,), jnp.float32),
            "hits": jnp.full((n_prob, TARGETS.size), -1, jnp.int32),
            "evals": jnp.zeros((), jnp.int32),
            "key": keys[:, 1],
        }
        # strong types, as the scan in `chunk` returns them (a weak-typed carry would compile chunk twice)
        return jax.tree.map(_strong, carry)

    def initial() -> dict[str, Any]:
        with jax.numpy_rank_promotion("allow"):  # third-party strategies (evosax) rely on implicit broadcasting
            return start(problem_keys, means, params)

    def generation(data, carry, run_keys, index):
        states, evals = carry
        keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, index)))(run_keys)  # (P, 2)
        pop, states = jax.vmap(es.ask, in_axes=(0, 0, None))(keys[:, 0], states, params)
        x = jax.vmap(to_points)(pop)
        noise = None
        if kind == "bbob-noisy":
            # COCO's noise model with counters drawn from the problem's key (COCO logs noise-free values,
            # and so does `score`: only the strategies see the noise)
            counters = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 7), (2, n), 1, 10**9))(keys[:, 1])
            noise = (counters[:, 0], counters[:, 1])
        delta = suite_evaluate(data, x, groups, shared=False, subtract_fopt=True, noise_seeds=noise, kind=kind)
        delta = jnp.where(jnp.isnan(delta), jnp.inf, delta)
        states, _ = jax.vmap(es.tell, in_axes=(0, 0, 0, 0, None))(keys[:, 1], pop, delta, states, params)
        return (states, evals + n), x

    @jax.jit
    def chunk(carry, data, first_generation):
        index = first_generation + jnp.arange(size)
        data = padded(data)

        def body(c, xs):
            i, active = xs
            new, out = generation(data, c, carry["key"], i)
            # padded generations (the last chunk is padded to a full one, to compile once) change nothing
            return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, c), out

        (states, evals), xs = jax.lax.scan(body, (carry["states"], carry["evals"]), (index, index < gens))
        return {**carry, "states": states, "evals": evals}, xs

    @jax.jit
    def score(carry, data64, xs, first_generation):
        # the chunk's points (G, P, N, D) scored in float64, in evaluation order (generation, then member)
        count = jnp.minimum(gens - first_generation, size) * n  # evaluations of this chunk (no padding)
        x = jnp.moveaxis(xs, 0, 1).reshape((n_prob, size * n, d)).astype(jnp.float64)
        delta = suite_evaluate(padded(data64), x, groups, shared=False, subtract_fopt=True, kind=kind)
        delta = jnp.where(jnp.isnan(delta) | (jnp.arange(size * n) >= count)[None, :], jnp.inf, delta)
        below = delta[:, None, :] <= jnp.asarray(TARGETS)[None, :, None]  # (P, T, evaluations)
        first = jnp.argmax(below, axis=-1).astype(jnp.int32)
        hits = carry["hits"]
        evals0 = (first_generation * n).astype(jnp.int32)
        hits = jnp.where((hits < 0) & jnp.any(below, axis=-1), evals0 + first + 1, hits)
        best = carry["best_hi"].astype(jnp.float64) + carry["best_lo"].astype(jnp.float64)
        best_hi, best_lo = _split_best(jnp.minimum(best, jnp.min(delta, axis=1)))
        return {**carry, "hits": hits, "best_hi": best_hi, "best_lo": best_lo}

    chunks = -(-gens // size)
    return _Run(index, strategy_index, comp, suite, budget, gens, size, chunks, initial, chunk, score)


def _resolve(strategy: StrategyArg | Competitor, d: int, budget: int, population: int | None) -> Competitor:
    if isinstance(strategy, str):
        return make_competitor(strategy, d, budget, population_size=population)
    comp = strategy(d, budget) if callable(strategy) else strategy
    if not isinstance(comp, Competitor):
        raise ValueError(f"A strategy is a name, a Competitor or a callable returning one; got {type(comp).__name__}.")
    way_out = "pass a callable (dimension, budget) -> Competitor that builds it for each dimension"
    if comp.template.size != d:
        size = comp.template.size
        raise ValueError(f"Competitor {comp.name!r} has a {size}-number template for a {d}-D problem: {way_out}.")

    def points(key):
        state = comp.strategy.init(key, comp.template, comp.params)
        return comp.to_points(comp.strategy.ask(key, state, comp.params)[0])

    with jax.numpy_rank_promotion("allow"):  # (evosax broadcasts implicitly)
        shape = tuple(jax.eval_shape(points, jax.random.key(0)).shape)
    if shape != (comp.population_size, d):
        raise ValueError(
            f"Competitor {comp.name!r}: to_points gives {shape} points, not (population_size, D) = "
            f"({comp.population_size}, {d}): set population_size to the members ask returns, or {way_out}."
        )
    return comp


def _strategy_label(strategy: StrategyArg | Competitor) -> str:
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, Competitor):
        return f"Competitor({strategy.name})"
    return f"{getattr(strategy, '__module__', '?')}.{getattr(strategy, '__qualname__', type(strategy).__name__)}"


class BBOBTask(Task):
    """The benchmark as a :class:`eggroll.run.loop.Task`: generation ``g`` is the ``g``-th chunk over all runs.

    The carry is ``{"run<i>": {"states", "best_hi", "best_lo", "hits", "evals", "key"}}`` for
    every run (a finished run's entry holds its results; the problem data is
    rebuilt, not saved); :meth:`save_extra` keeps the runs' wall times. At the
    end (:meth:`finish`) the finished runs' tables, runtimes, ECDF plot and
    COCO data are written; a run stopped by a signal writes none of them. ``total`` is the
    number of chunks the budget implies (the loop's generations for the whole benchmark).

    Args:
        strategies: names (see :func:`make_competitor`), :class:`Competitor` s,
            callables ``(dimension, budget) -> Competitor``, or a comma-separated string.
        functions: function ids or a spec like ``"1-24"`` (``None``: all of the suite's).
        dimensions: dimensions or a spec like ``"2,10"``.
        instances: instance ids or a spec like ``"1-5"``.
        budget_multiplier: evaluations per dimension (COCO's convention).
        suite: the COCO suite: ``"bbob"``, ``"bbob-noisy"`` (the strategies see COCO's noise, the runtimes
            count the noise-free values, as COCO's logger does), ``"bbob-largescale"`` or ``"bbob-mixint"``.
        population: members per generation for the named strategies (``None``: each one's default per dimension).
        seed: seeds the initial means and the strategies' keys.
        x0: ``"uniform"`` in ``[-4, 4]^D`` (one draw per problem, shared by all strategies) or ``"origin"``.
        chunk_generations: generations per compiled call (the loop's generation).
        coco_observer: also log every evaluated point through ``cocoex.Observer("bbob")`` on the suite's
            problems into ``out_dir/coco`` (replayed through cocoex after each run).
        out_dir: where the COCO data goes (the loop's ``out`` for the other files).
        plot: draw ``bbob_ecdf.png``.
        x64: compute in float64; build and run the task inside ``jax.enable_x64(True)``.

    Raises:
        ValueError: unknown strategies, ids or dimensions, a budget smaller than one generation.
    """

    name = "bbob"
    unit = "chunk"
    columns = (
        "generation",
        "run",
        "strategy_index",
        "dimension",
        "chunk",
        "run_generations",
        "evaluations",
        "median_delta",
        "best_delta",
        "targets_reached",
        "solved_1e-8",
        "seconds",
        "evals_per_s",
        "generations_per_s",
    )
    may_change = "--generations, --time-budget, --checkpoint-every and --quiet"

    def __init__(
        self,
        strategies: Sequence[StrategyArg | Competitor] | str = "open_es,eggroll,cma_es",
        functions: str | Iterable[int] | None = None,
        dimensions: str | Iterable[int] = (2, 10),
        instances: str | Iterable[int] = "1-5",
        budget_multiplier: float = 1000.0,
        *,
        suite: str = "bbob",
        population: int | None = None,
        seed: int = 0,
        x0: str = "uniform",
        chunk_generations: int = 50,
        coco_observer: bool = False,
        out_dir: str | Path | None = None,
        plot: bool = True,
        x64: bool = False,
    ) -> None:
        if isinstance(strategies, str):
            strategies = [s.strip() for s in strategies.split(",") if s.strip()]
        strategies = list(strategies)
        if not strategies:
            raise ValueError("run_benchmark() needs at least one strategy, e.g. ['cma_es'].")
        dims = parse_ids(dimensions)
        if budget_multiplier <= 0:
            raise ValueError(f"budget_multiplier must be positive, got {budget_multiplier}.")
        if population is not None and population < 1:
            raise ValueError(f"--population must be >= 1 (or left out for each strategy's default), got {population}")
        if coco_observer and out_dir is None:
            raise ValueError("coco_observer=True needs an out_dir to write COCO's data into.")
        if suite not in SUITE_DIMENSIONS:
            raise ValueError(f"Unknown COCO suite {suite!r}: use one of {', '.join(SUITE_DIMENSIONS)}.")
        if coco_observer and not set(dims) <= set(SUITE_DIMENSIONS[suite]):
            raise ValueError(
                f"COCO's observer only logs the {suite} suite's dimensions "
                f"{','.join(map(str, SUITE_DIMENSIONS[suite]))}, got {','.join(map(str, dims))}: "
                "drop the others or run without coco_observer."
            )
        if chunk_generations < 1:
            raise ValueError(f"chunk_generations must be >= 1, got {chunk_generations}.")
        if x64 and not jax.config.jax_enable_x64:
            raise ValueError("x64=True: build and run the task inside `with jax.enable_x64(True):`.")
        if functions is None:
            functions = SUITE_FUNCTIONS[suite]
        # validates ids and dims up front
        suites = {d: BBOBSuite(functions, instances, d, suite=suite) for d in dims}
        problems = suites[dims[0]].problems
        self.suite = suite
        self._settings = {
            **({} if suite == "bbob" else {"suite": suite}),  # bbob checkpoints of earlier versions still resume
            "strategies": [_strategy_label(s) for s in strategies],
            "functions": sorted({f for f, _ in problems}),
            "instances": sorted({i for _, i in problems}),
            "dims": [int(d) for d in dims],
            "budget": float(budget_multiplier),
            "population": population,
            "seed": int(seed),
            "x0": str(x0),
            "chunk_generations": int(chunk_generations),
            "x64": bool(x64),
        }
        self.out = None if out_dir is None else Path(out_dir)
        self.coco, self.plot = coco_observer, plot
        key = jax.random.key(seed)
        self.runs: list[_Run] = []
        for d in dims:
            means = _initial_means(jax.random.fold_in(key, d), suites[d].problems, d, x0)
            budget = int(budget_multiplier * d)
            comps = [_resolve(strategy, d, budget, population) for strategy in strategies]
            names = [comp.name for comp in comps]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:  # results, tables and runtimes are keyed by the name
                raise ValueError(
                    f"{len(names) - len(set(names)) + 1} strategies are named {twice[0]!r}: results are kept by name, "
                    f"so give each its own Competitor name, e.g. dataclasses.replace(make_competitor(...), "
                    f"name='{twice[0]}_sigma0.1')"
                )
            for si, comp in enumerate(comps):
                self.runs.append(_make_run(len(self.runs), si, comp, suites[d], means, key, budget, chunk_generations))
        self.data = {d: suite.device_data() for d, suite in suites.items()}
        with jax.enable_x64(True):  # the points are scored in float64, whatever the strategies compute in
            self.data64 = {d: jax.tree.map(jnp.asarray, suite.data) for d, suite in suites.items()}
        self.ends = list(np.cumsum([r.chunks for r in self.runs]))  # the generation that finishes each run
        self.total = int(self.ends[-1])  # chunks over all runs: the loop's generations for the whole budget
        self.seconds = [0.0] * len(self.runs)
        self._points: list[np.ndarray] = []
        self._observers: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def init(self) -> dict[str, Any]:
        return {f"run{r.index}": r.start() for r in self.runs}

    def should_checkpoint(self, generation: int) -> bool:
        """Save after every finished (strategy, dimension) run besides the ``--checkpoint-every`` schedule."""
        return generation in self.ends

    def where(self, generation: int) -> tuple[_Run, int]:
        """The run that generation ``generation`` (1-based) belongs to and its chunk in it (1-based)."""
        i = bisect.bisect_left(self.ends, generation)
        return self.runs[i], generation - (self.ends[i - 1] if i else 0)

    def step(self, carry: dict[str, Any], generation: int) -> tuple[dict[str, Any], dict[str, Any]]:
        run_, c = self.where(generation)
        name, n, gens = f"run{run_.index}", run_.comp.population_size, run_.generations
        t0 = time.perf_counter()
        with jax.numpy_rank_promotion("allow"):  # third-party strategies (evosax) broadcast implicitly
            new, xs = run_.chunk(carry[name], self.data[run_.suite.dimension], (c - 1) * run_.size)
        with jax.enable_x64(True):
            new = run_.score(new, self.data64[run_.suite.dimension], xs, (c - 1) * run_.size)
        best, hits = joined_best(new)[: run_.problems], np.asarray(new["hits"])[: run_.problems]
        seconds = time.perf_counter() - t0
        self.seconds[run_.index] += seconds
        done = min(c * run_.size, gens)
        advance = done - (c - 1) * run_.size
        if self.coco:
            self._points.append(np.asarray(xs)[:advance])  # (generations, P, N, D)
            if c == run_.chunks:
                self._replay_coco(run_)
        row = {
            "run": run_.index,
            "strategy_index": run_.strategy_index,
            "dimension": run_.suite.dimension,
            "chunk": c,
            "run_generations": done,
            "evaluations": done * n,
            "median_delta": float(np.median(best)),
            "best_delta": float(np.min(best)),
            "targets_reached": float(np.mean(hits >= 0)),
            "solved_1e-8": float(np.mean(hits[:, -1] >= 0)),
            "evals_per_s": advance * n * best.shape[0] / max(seconds, 1e-9),
        }
        return {**carry, name: new}, row

    def describe(self, row: Mapping[str, Any]) -> str:
        run_ = self.runs[row["run"]]
        return (
            f"{run_.label} chunk {row['chunk']}/{run_.chunks}: median best f-fopt {row['median_delta']:.2e}, "
            f"targets hit {row['targets_reached']:.0%}"
        )

    def save_extra(self) -> dict[str, Any]:
        return {"run_seconds": self.seconds}

    def load_extra(self, extra: Mapping[str, Any]) -> None:
        self.seconds = [float(s) for s in extra.get("run_seconds", self.seconds)]

    def stopped_at(self, generation: int) -> str:
        """Where a benchmark that stopped after ``generation`` chunks stands, in words ("" if it is complete)."""
        if generation >= self.total:
            return ""
        run_, c = self.where(generation + 1)
        return (
            f"{run_.label}, generation {min((c - 1) * run_.size, run_.generations)} of {run_.generations}, "
            f"run {run_.index + 1} of {len(self.runs)}"
        )

    def result(self, done: RunResult, out: str | Path | None = None) -> BenchmarkResult:
        """The runs finished when the loop stopped, as a :class:`BenchmarkResult`.

        Finalises COCO's data and, unless a signal stopped the run (the checkpoint holds everything; the
        files come with the resume), writes the tables, runtimes and ECDF plot into ``out`` (if given).
        """
        bench = BenchmarkResult(records=[], hits={}, problems={}, budgets={}, step=done.generation)
        bench.interrupted, bench.resumed_from = done.interrupted, done.resumed_from
        bench.checkpoint_dir = None if done.checkpoint_dir is None else Path(done.checkpoint_dir)
        bench.stopped_at = self.stopped_at(done.generation)
        for r, end in zip(self.runs, self.ends, strict=True):
            bench.problems.setdefault(r.suite.dimension, list(r.suite.problems))
            bench.budgets.setdefault(r.suite.dimension, r.budget)
            if end <= done.generation:
                state = done.carry[f"run{r.index}"]
                hits, best = np.asarray(state["hits"])[: r.problems], joined_best(state)[: r.problems]
                _add_run(bench, r, hits, best, self.seconds[r.index])
        self._observers.clear()  # finalises COCO's files
        if out is not None and not bench.interrupted:
            from eggroll.problems.bbob import report

            out = Path(out)
            bench.files.update(report.write_tables(bench, out))
            if self.plot:
                bench.files["ecdf"] = report.plot_ecdf(bench, out / "bbob_ecdf.png")
            if self.coco:
                bench.files["coco"] = out / "coco"
        return bench

    def finish(self, carry: Any, result: RunResult) -> dict[str, Any]:
        bench = self.result(result, result.out)
        record: dict[str, Any] = {
            "files": {k: str(v) for k, v in bench.files.items()},  # the loop records them relative to --out
            "runs_finished": len(bench.seconds),
            "runs": len(self.runs),
            "run_seconds": {f"{name} {d}-D": s for (name, d), s in bench.seconds.items()},
        }
        if bench.stopped_at:
            record["stopped_at"] = bench.stopped_at
        return record

    def _replay_coco(self, run_: _Run) -> None:
        """Feed every point the run evaluated, in order, through the observed cocoex problems."""
        import cocoex

        name, suite, d = run_.comp.name, run_.suite, run_.suite.dimension
        if name not in self._observers:
            cocoex.log_level("warning")
            folder = self.out / "coco"
            folder.mkdir(parents=True, exist_ok=True)
            outer = str(folder.resolve())
            if " " in outer or " " in name:
                raise ValueError(
                    f"COCO's observer options cannot hold spaces: {outer!r}, {name!r}; choose another out."
                )
            options = f"outer_folder: {outer} result_folder: {name} algorithm_name: {name}"
            self._observers[name] = cocoex.Observer("bbob", options)  # COCO's observer of every bbob suite
        allx = np.concatenate(self._points, axis=0)
        self._points = []
        fids = ",".join(str(f) for f in sorted({f for f, _ in suite.problems}))
        iids = ",".join(str(i) for i in sorted({i for _, i in suite.problems}))
        coco_suite = cocoex.Suite(self.suite, f"instances: {iids}", f"function_indices: {fids} dimensions: {d}")
        for k, (f, i) in enumerate(suite.problems):
            prob = coco_suite.get_problem_by_function_dimension_instance(f, d, i, self._observers[name])
            for x in allx[:, k].reshape(-1, d).astype(np.float64):
                prob(x)
            prob.free()


def _add_run(result: BenchmarkResult, run_: _Run, hits: np.ndarray, best: np.ndarray, seconds: float) -> None:
    """Adds a finished (strategy, dimension) run to ``result``: its hits, seconds and one record per problem."""
    name, d, n = run_.comp.name, run_.suite.dimension, run_.comp.population_size
    result.hits[(name, d)] = hits
    result.seconds[(name, d)] = float(seconds)
    for k, (f, i) in enumerate(run_.suite.problems):
        best_t = int(np.sum(hits[k] >= 0)) - 1  # the reached targets are the easiest ones (-1: none)
        result.records.append(
            {
                "strategy": name,
                "function": f,
                "instance": i,
                "dimension": d,
                "population_size": n,
                "budget": run_.budget,
                "evaluations": run_.generations * n,
                "final_delta": float(best[k]),
                "best_target": float(TARGETS[best_t]) if best_t >= 0 else float("nan"),
                "evals_to_best_target": int(hits[k, best_t]) if best_t >= 0 else -1,
                "evals_to_1e-8": int(hits[k, -1]) if hits[k, -1] >= 0 else -1,
            }
        )


def run_benchmark(
    strategies: Sequence[StrategyArg | Competitor] | str,
    functions: str | Iterable[int] | None = None,
    dimensions: str | Iterable[int] = (2, 10),
    instances: str | Iterable[int] = "1-5",
    budget_multiplier: float = 1000.0,
    *,
    suite: str = "bbob",
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
    population: int | None = None,
    generations: int | None = None,
    time_budget: float | None = None,
) -> BenchmarkResult:
    """Runs strategies on BBOB problems with a budget of ``budget_multiplier * D`` evaluations.

    Builds a :class:`BBOBTask` and runs it with :func:`eggroll.run.loop.run`.
    The (strategy, dimension) runs go in order: dimensions outer, strategies
    inner; each is a sequence of chunks of ``chunk_generations`` generations,
    numbered 1, 2, ... over all runs (the *step* of checkpoints and metrics).

    With ``checkpoint_dir`` the loop saves the carry (every run's strategy states,
    best-so-far values, target hits, evaluation count and key) after every finished
    (strategy, dimension) run, every ``checkpoint_every`` steps, at the end and after
    the current chunk when SIGTERM / Ctrl-C arrives (the call then returns with
    ``interrupted`` set).
    ``resume=True`` continues from the newest checkpoint: finished runs are not
    recomputed, and the results are identical, bit for bit, to those of an
    uninterrupted run.

    Args:
        strategies: names (see :func:`make_competitor`), :class:`Competitor` s,
            callables ``(dimension, budget) -> Competitor``, or a comma-separated string.
        functions: function ids or a spec like ``"1-24"`` (``None``: all of the suite's).
        dimensions: dimensions or a spec like ``"2,10"``.
        instances: COCO instance ids or a spec like ``"1-5"``.
        budget_multiplier: evaluations per dimension (COCO's convention).
        suite: ``"bbob"``, ``"bbob-noisy"``, ``"bbob-largescale"`` or ``"bbob-mixint"`` (see :class:`BBOBTask`).
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
        progress: show the progress display.
        plot: draw the ECDF figure (needs ``out_dir``).
        x64: run in float64 (``jax.enable_x64``): the functions and evosax strategies then
            compute in double precision (eggroll's strategies keep float32 noise and means).
        checkpoint_dir: where checkpoints go (``None``: none). A fresh run
            (``resume=False``) refuses a directory that already holds checkpoints.
        checkpoint_every: also save every this many steps (chunks), besides every finished
            run, the end and interruptions (``None``: only those).
        resume: continue from the newest checkpoint in ``checkpoint_dir``; the settings (strategies, functions,
            dimensions, instances, budget, population, seed, x0, chunk size, x64)
            must be those of the checkpointed run.
        log_dir: write one metrics row per chunk there
            (JSONL, CSV and TensorBoard, as every command); on resume the rows after
            the checkpoint are dropped first.
        population: members per generation of the named strategies (``None``: their defaults).
        generations: stop after this many steps (chunks) in total (``None``: all
            the budget implies); the runs finished by then are written.
        time_budget: seconds; stop early enough to end within them (the runs finished by then are written).

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        ValueError: for unknown strategies, ids or dimensions, a budget too
            small for one generation, bad loop options (e.g. ``checkpoint_every=0``), a fresh
            run into a directory holding checkpoints, or a resume with other settings.
        eggroll.checkpoint.CheckpointError: no usable checkpoint to resume from.
    """
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the checkpoints of the run to continue).")
    refuse_coco_resume(coco_observer, resume)
    with jax.enable_x64(True) if x64 else contextlib.nullcontext():
        task = BBOBTask(
            strategies,
            functions,
            dimensions,
            instances,
            budget_multiplier,
            suite=suite,
            population=population,
            seed=seed,
            x0=x0,
            chunk_generations=chunk_generations,
            coco_observer=coco_observer,
            out_dir=out_dir,
            plot=plot,
            x64=x64,
        )
        options = RunOptions(
            generations=task.total if generations is None else min(generations, task.total),
            checkpoint_every=checkpoint_every,
            resume=resume,
            time_budget=time_budget,
            quiet=not progress,
        )
        # out=None: the loop writes no result.json and no files of its own; the tables are written here
        done = run(task, options, checkpoint_dir=checkpoint_dir, metrics_dir=log_dir)
        return task.result(done, out_dir)


def refuse_coco_resume(coco_observer: bool, resume: bool) -> None:
    """Raise ``ValueError`` for ``--coco`` with ``--resume`` (COCO's observer needs points checkpoints do not hold)."""
    if coco_observer and resume:
        raise ValueError(
            "--coco cannot be combined with --resume: COCO's observer replays every point a run evaluated, and "
            "checkpoints do not store them. Resume without --coco (the tables, runtimes and ECDF are complete; "
            "<out>/coco then holds only the runs finished before the stop), or rerun with --coco into a new --out."
        )
