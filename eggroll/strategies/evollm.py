"""EvoLLM: a language model as the recombination operator of an evolution strategy.

Lange, Tian & Tang (2024), "Large Language Models As Evolution Strategies". Each
generation:

1. the best members of the generation join a first-in-first-out archive (so it
   holds the best solutions of the recent generations);
2. the archive is discretised to integers at a fixed resolution and written one
   solution per line with its fitness, sorted worst -> best ("least to most"), so
   the best solutions sit right above the query line;
3. the language model completes the query line with a new mean, which is parsed
   back to floats and clipped to the bounds; in more than ``block_size``
   dimensions the coordinates are split into blocks and each block is its own
   prompt (all prompts of a generation go to the backend as one batch);
4. the next population is sampled around that mean with an isotropic sigma that
   follows a schedule (sigma never comes from the model).

Unparseable answers are retried (sampled, with a new seed); a block that still
fails keeps the best-so-far solution's coordinates. ``metrics`` report the
parse-failure and fallback rates of the generation.

How it composes with ``jit`` and ``lax.scan``: ``ask`` is ordinary traceable JAX.
``tell`` updates the archive in JAX and calls the language model on the host
through :func:`jax.experimental.io_callback`, so ``jax.jit(es.tell)`` and a whole
run inside ``lax.scan`` work; the jitted program waits for the host while the
model answers. The callback is unordered: consecutive generations are already
ordered by their data (each ``tell`` needs the previous archive), and an ordered
callback can leave a failed model call's error in JAX's runtime token, where it
breaks later calls in the process (e.g. a resume after the endpoint came
back). ``jax.vmap`` over ``tell`` (e.g. over seeds run in lockstep) makes ONE host
call per generation for the whole batch: the callback is wrapped in
:func:`jax.custom_batching.custom_vmap`, so the prompts of every batch element
(and every block) go to the backend as one ``generate`` batch. Greedy answers
equal the unbatched ones; with sampling the batch shares the first element's
seed, so draws differ from unbatched calls.

This module holds the strategy only; :func:`eggroll.apps.evollm.run` runs it through the one
loop (progress display, checkpoints, bit-for-bit resume, metrics).
"""

from __future__ import annotations

import collections
import re
import types
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.custom_batching
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from eggroll import noise as nz
from eggroll.strategies import _checks
from eggroll.types import Strategy

_RAISED: collections.deque[BaseException] = collections.deque(maxlen=8)  # the backends' recent errors (host side)


def backend_error(error: BaseException) -> BaseException | None:
    """The language model backend's own exception behind ``error``, or ``None``.

    An exception raised on the host during ``tell`` (an unreachable endpoint:
    :class:`~eggroll.llm.base.LLMConnectionError`) reaches the caller wrapped by XLA, as a
    ``jax.errors.JaxRuntimeError`` whose message ends with the original's type and message; this
    returns the original exception object.

    Example:
        >>> try:
        ...     state, metrics = jax.jit(es.tell)(key, population, fitness, state, params)  # doctest: +SKIP
        ... except jax.errors.JaxRuntimeError as err:
        ...     raise (backend_error(err) or err) from err  # doctest: +SKIP
    """
    text = str(error)
    return next((e for e in reversed(_RAISED) if e is error or f"{type(e).__name__}: {e}" in text), None)


class PromptFormat(NamedTuple):
    """How the archive is written and where the model continues.

    The default is a plain completion prompt (no instructions), one solution per
    line, e.g. for a 2-D block::

        x: 412,630 f: 31.52
        x: 480,571 f: 4.09
        x:

    Attributes:
        header: text placed before the solution lines (may be empty; ``{dims}``
            is replaced by the number of coordinates in the block, ``{better}``
            by "lower" or, with ``maximize=True``, "higher").
        line: one archive entry; must contain ``{x}`` then ``{f}``.
        query: the last line, which the model completes with integers; ``{f}``
            in it is replaced by the best fitness in the archive.
        separator: between the integers of one solution.
        fitness_format: ``str.format`` spec for fitness values.
    """

    header: str = ""
    line: str = "x: {x} f: {f}"
    query: str = "x:"
    separator: str = ","
    fitness_format: str = "{:.2f}"


CHAT_FORMAT = PromptFormat(
    header=(
        "You are an optimizer. Each line below is a solution (integers) and its fitness f; {better} f "
        "is better and the lines go from worst to best. Propose a new solution with a {better} f than all "
        "of them. Answer with one line: x: followed by {dims} comma-separated integers, nothing else."
    ),
)
"""A preset for chat models (``OpenAIBackend(api="chat")`` or ``LocalBackend(chat=True)``): the
same lines, preceded by an instruction, because a chat model answers a bare pattern with prose."""


class EvoLLMParams(NamedTuple):
    """Traceable numbers: sigma at generation t is ``max(sigma_init * sigma_decay**t, sigma_min)``."""

    sigma_init: jax.Array
    sigma_decay: jax.Array
    sigma_min: jax.Array


class EvoLLMState(NamedTuple):
    """State of an EvoLLM run (every field a JAX array; fitness kept in the minimisation sign)."""

    mean: jax.Array  # (D,)
    archive_x: jax.Array  # (A, D), newest first
    archive_f: jax.Array  # (A,), +inf where empty
    best_x: jax.Array  # (D,)
    best_f: jax.Array  # ()
    generation: jax.Array  # () int32
    llm_queries: jax.Array  # () int32, prompts answered so far
    llm_failures: jax.Array  # () int32, answers that could not be parsed
    fallbacks: jax.Array  # () int32, blocks that kept the best-so-far coordinates


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")  # 12, -3.5, 1e3
# parsed values are clipped to +-this before the cast to int64 (no overflow; decode then clips them to the range)
_INT_LIMIT = 2.0**53


def encode(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, resolution: int) -> np.ndarray:
    """Maps coordinates in ``[lower, upper]`` to integers in ``[0, resolution]``."""
    z = (np.asarray(x, np.float64) - lower) / (upper - lower)
    return np.rint(np.clip(z, 0.0, 1.0) * resolution).astype(np.int64)


def decode(ints: np.ndarray, lower: np.ndarray, upper: np.ndarray, resolution: int) -> np.ndarray:
    """Inverse of :func:`encode` (integers outside ``[0, resolution]`` are clipped)."""
    z = np.clip(np.asarray(ints, np.float64), 0, resolution) / resolution
    return lower + z * (upper - lower)


def block_indices(dim: int, block_size: int) -> list[np.ndarray]:
    """Splits ``range(dim)`` into ``ceil(dim / block_size)`` contiguous, near-equal blocks."""
    return np.array_split(np.arange(dim), -(-dim // block_size))  # -(-a // b): ceil(a / b)


def format_solution(ints: Sequence[int], fmt: PromptFormat) -> str:
    """Writes integers with the format's separator, e.g. ``412,630``."""
    return fmt.separator.join(str(int(i)) for i in ints)


def build_prompt(ints: np.ndarray, fitness: np.ndarray, fmt: PromptFormat = PromptFormat()) -> str:
    """Builds one prompt: solutions sorted worst -> best (for minimisation: descending fitness).

    Args:
        ints: ``(K, B)`` discretised archive entries (one block of coordinates).
        fitness: ``(K,)`` fitness in the sign shown to the model; *lower is better*
            (pass ``-fitness`` to sort a maximisation problem, and show it with
            ``shown_fitness``).
        fmt: the prompt format.

    Returns:
        The prompt text, ending with the query line (no trailing newline).
    """
    return _build(ints, fitness, fitness, fmt)


def _build(ints: np.ndarray, order_key: np.ndarray, shown: np.ndarray, fmt: PromptFormat, better: str = "lower") -> str:
    order = np.argsort(-np.asarray(order_key), kind="stable")  # worst first, best last
    lines = []
    if fmt.header:
        lines.append(fmt.header.replace("{dims}", str(ints.shape[1])).replace("{better}", better))
    for k in order:
        f = fmt.fitness_format.format(float(shown[k]))
        lines.append(fmt.line.replace("{x}", format_solution(ints[k], fmt)).replace("{f}", f))
    best_shown = fmt.fitness_format.format(float(shown[order[-1]])) if len(order) else ""
    lines.append(fmt.query.replace("{f}", best_shown))
    return "\n".join(lines)


def parse_answer(text: str, n: int, fmt: PromptFormat = PromptFormat()) -> np.ndarray | None:
    """Reads ``n`` integers from a completion of the query line.

    The answer is cut at the first newline and at the fitness marker of
    ``fmt.line`` (what separates ``{x}`` from ``{f}``, e.g. ``f:``). Numbers may have
    decimals and an exponent (``1e3`` is 1000); they are rounded, and a value beyond
    ``+-2**53`` is clipped to it (:func:`decode` then clips it to the range). Extra
    numbers after the first ``n`` are ignored.

    Returns:
        An int array of shape ``(n,)``, or ``None`` when fewer than ``n`` numbers
        were found (a malformed or partial answer).
    """
    text = text.split("\n", 1)[0]
    marker = _fitness_marker(fmt)
    if marker and marker in text:
        text = text.split(marker, 1)[0]
    numbers = _NUMBER.findall(text)
    if len(numbers) < n:
        return None
    values = np.clip(np.array([float(v) for v in numbers[:n]]), -_INT_LIMIT, _INT_LIMIT)  # no int64 overflow
    return np.rint(values).astype(np.int64)


def _fitness_marker(fmt: PromptFormat) -> str:
    return fmt.line.split("{x}", 1)[-1].split("{f}", 1)[0].strip()  # what stands between {x} and {f}


def sigma_at(params: EvoLLMParams, generation: jax.Array) -> jax.Array:
    """The isotropic sigma of the schedule at a generation."""
    decayed = params.sigma_init * params.sigma_decay ** generation.astype(jnp.float32)
    return jnp.maximum(decayed, params.sigma_min)


def evollm(
    population_size: int,
    solution: jax.Array,
    backend: Any = None,
    *,
    maximize: bool = False,
    bounds: tuple[Any, Any] = (-5.0, 5.0),
    resolution: int = 1000,
    archive_size: int = 10,
    elites_per_generation: int = 2,
    block_size: int = 4,
    prompt_format: PromptFormat = PromptFormat(),
    temperature: float = 0.0,
    retry_temperature: float = 0.8,
    max_tokens: int | None = None,
    num_retries: int = 2,
    on_backend_error: str = "raise",
    sigma_init: float | None = None,
    sigma_decay: float = 0.95,
    sigma_min: float | None = None,
) -> Strategy:
    """Builds the EvoLLM strategy for a 1-D vector solution.

    Args:
        population_size: members sampled per generation around the model's mean.
        solution: a template / starting vector of shape ``(D,)``.
        backend: an :class:`eggroll.llm.base.LLMBackend`; ``None`` loads the local
            SmolLM2-135M-Instruct (:class:`eggroll.llm.local.LocalBackend`) on first use.
        maximize: treat fitness as a reward (metrics stay in your sign).
        bounds: ``(lower, upper)``, scalars or ``(D,)`` arrays; the mean and the
            samples are clipped to them and the integers span them.
        resolution: the integers of the prompt run from 0 (``lower``) to
            ``resolution`` (``upper``).
        archive_size: solutions kept in the prompt.
        elites_per_generation: best members of each generation added to the archive.
        block_size: the most coordinates per prompt.
        prompt_format: see :class:`PromptFormat`.
        temperature: sampling temperature of the first query (0 = greedy).
        retry_temperature: temperature of retries (a greedy retry would repeat itself).
        max_tokens: new tokens per answer; default fits one block's integers
            (one token per digit, as in SmolLM2's tokenizer).
        num_retries: extra queries for answers that could not be parsed.
        on_backend_error: ``"raise"`` (default) propagates backend errors (an
            unreachable endpoint, a timeout); ``"fallback"`` keeps the best-so-far
            mean for that generation and counts every block as a fallback.
        sigma_init: first sigma; default 10% of the bounds' mean width.
        sigma_decay: sigma multiplier per generation.
        sigma_min: sigma floor; default 0.1% of the bounds' mean width.

    Returns:
        A :class:`eggroll.types.Strategy`.

    Raises:
        ValueError: for a solution that is not a vector or inconsistent options.
    """
    solution = jnp.asarray(solution)
    if solution.ndim != 1 or solution.shape[0] < 1:
        raise ValueError(
            f"evollm works on a 1-D vector solution, got shape {solution.shape}; flatten a pytree "
            "with jax.flatten_util.ravel_pytree and unflatten inside your fitness function"
        )
    if not jnp.issubdtype(solution.dtype, jnp.floating):
        solution = solution.astype(jnp.float32)
    dim, dtype = solution.shape[0], solution.dtype
    lower = np.broadcast_to(np.asarray(bounds[0], np.float64), (dim,)).copy()
    upper = np.broadcast_to(np.asarray(bounds[1], np.float64), (dim,)).copy()
    if not np.all(upper > lower):
        raise ValueError(f"bounds must satisfy lower < upper in every coordinate, got {bounds}")
    given = locals()
    for name in ("population_size", "resolution", "archive_size", "elites_per_generation", "block_size"):
        if int(given[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {given[name]}")
    if elites_per_generation > min(archive_size, population_size):
        raise ValueError(
            f"elites_per_generation={elites_per_generation} must be <= archive_size={archive_size} and <= "
            f"population_size={population_size} (the best members of each generation join the archive); lower "
            "elites_per_generation or raise the others"
        )
    if on_backend_error not in ("raise", "fallback"):
        raise ValueError(f"on_backend_error must be 'raise' or 'fallback', got {on_backend_error!r}")
    if "{x}" not in prompt_format.line or "{f}" not in prompt_format.line:
        raise ValueError("prompt_format.line must contain '{x}' and '{f}'")
    width = float(np.mean(upper - lower))
    blocks = block_indices(dim, block_size)
    if max_tokens is None:  # digits and a separator per coordinate, plus a leading space and slack
        max_tokens = max(len(b) for b in blocks) * (len(str(resolution)) + 1) + 2
    stop = ("\n", _fitness_marker(prompt_format)) if _fitness_marker(prompt_format) else ("\n",)
    lower_j, upper_j = jnp.asarray(lower, dtype), jnp.asarray(upper, dtype)
    sign = -1.0 if maximize else 1.0
    cfg = types.SimpleNamespace(  # what eggroll.strategies._checks reads: the same errors as open_es
        population_size=population_size, treedef=jax.tree.structure(solution), specs=tuple(nz.leaf_specs(solution))
    )
    holder: dict[str, Any] = {"backend": backend}

    def get_backend():
        if holder["backend"] is None:
            from eggroll.llm.local import LocalBackend

            holder["backend"] = LocalBackend()
        return holder["backend"]

    def propose(archive_x, archive_f, best_x, seeds):
        """Host side, for any number of leading batch axes: prompts of every element and block, one
        backend call per attempt, retries, fallback -> (means, [queries, failures, fallbacks] per element)."""
        lead = np.shape(archive_f)[:-1]
        archive_x = np.asarray(archive_x).reshape((-1, archive_size, dim))
        archive_f = np.asarray(archive_f).reshape((-1, archive_size))
        means = np.asarray(best_x, np.float64).reshape((-1, dim)).copy()  # the fallback: best-so-far
        seeds = np.asarray(seeds).reshape(-1)
        stats = np.zeros((len(means), 3), np.int32)
        better = "higher" if maximize else "lower"
        jobs, prompts = [], []  # (element, block index) per prompt
        for e in range(len(means)):
            keep = np.isfinite(archive_f[e])
            if not keep.any():
                stats[e, 2] = len(blocks)
                continue
            ints = encode(archive_x[e][keep], lower, upper, resolution)
            f_min = archive_f[e][keep]
            for j, b in enumerate(blocks):
                jobs.append((e, j))
                prompts.append(_build(ints[:, b], f_min, sign * f_min, prompt_format, better))
        answers: list[np.ndarray | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        seed = int(seeds[0]) if len(seeds) else 0
        try:
            for attempt in range(num_retries + 1):
                if not pending:
                    break
                asked = [prompts[i] for i in pending]
                temp = temperature if attempt == 0 else max(temperature, retry_temperature)
                texts = get_backend().generate(
                    asked, temperature=temp, max_tokens=max_tokens, stop=stop, seed=seed + 7919 * attempt
                )
                for i, text in zip(pending, texts, strict=True):
                    e, j = jobs[i]
                    answers[i] = parse_answer(text, len(blocks[j]), prompt_format)
                    stats[e, 0] += 1
                    stats[e, 1] += answers[i] is None
                pending = [i for i in pending if answers[i] is None]
        except Exception as err:
            if on_backend_error == "raise":
                _RAISED.append(err)  # XLA passes on only its text: backend_error() finds the object again
                raise
            answers = [None] * len(jobs)  # every block keeps the best-so-far coordinates
        for i, (e, j) in enumerate(jobs):
            if answers[i] is None:
                stats[e, 2] += 1
            else:
                b = blocks[j]
                means[e, b] = decode(answers[i], lower[b], upper[b], resolution)
        return means.astype(dtype).reshape(lead + (dim,)), stats.reshape(lead + (3,))

    @jax.custom_batching.custom_vmap
    def ask_model(archive_x, archive_f, best_x, seed):
        lead = archive_f.shape[:-1]  # empty, or the batch axes added by the vmap rule below
        shapes = (jax.ShapeDtypeStruct(lead + (dim,), dtype), jax.ShapeDtypeStruct(lead + (3,), jnp.int32))
        return io_callback(propose, shapes, archive_x, archive_f, best_x, seed, ordered=False)

    @ask_model.def_vmap
    def _ask_model_batched(axis_size, in_batched, *args):
        # the whole batch in one host call (nested vmaps add leading axes to the same call)
        args = [
            a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, batched in zip(args, in_batched, strict=True)
        ]
        return ask_model(*args), (True, True)

    def init(key, mean=None, params=None):
        del key, params
        mean = solution if mean is None else _checks.check_mean(cfg, jnp.asarray(mean))[0]
        mean = jnp.clip(mean, lower_j, upper_j)
        zero = jnp.zeros((), jnp.int32)
        return EvoLLMState(
            mean=mean,
            archive_x=jnp.zeros((archive_size, dim), dtype),
            archive_f=jnp.full((archive_size,), jnp.inf, dtype),
            best_x=mean,
            best_f=jnp.asarray(jnp.inf, dtype),
            generation=zero,
            llm_queries=zero,
            llm_failures=zero,
            fallbacks=zero,
        )

    def ask(key, state, params):
        sigma = sigma_at(params, state.generation).astype(dtype)
        eps = jax.random.normal(key, (population_size, dim), dtype)
        return jnp.clip(state.mean[None, :] + sigma * eps, lower_j[None, :], upper_j[None, :]), state

    def tell(key, population, fitness, state, params):
        _checks.read_population(cfg, population)
        _checks.check_fitness(cfg, fitness)
        f = sign * jnp.asarray(fitness, dtype)
        f = jnp.where(jnp.isfinite(f), f, jnp.inf)  # NaN and +-inf rank worst (in the minimisation sign)
        order = jnp.argsort(f)[:elites_per_generation]
        archive_x = jnp.concatenate([population[order], state.archive_x])[:archive_size]
        archive_f = jnp.concatenate([f[order], state.archive_f])[:archive_size]
        improved = f[order[0]] < state.best_f
        best_x = jnp.where(improved, population[order[0]], state.best_x)
        best_f = jnp.where(improved, f[order[0]], state.best_f)
        seed = jax.random.randint(key, (), 0, 2**30, jnp.int32)
        mean, stats = ask_model(archive_x, archive_f, best_x, seed)
        mean = jnp.where(jnp.isfinite(mean), jnp.clip(mean, lower_j, upper_j), best_x)
        counters = (state.llm_queries + stats[0], state.llm_failures + stats[1], state.fallbacks + stats[2])
        new = EvoLLMState(mean, archive_x, archive_f, best_x, best_f, state.generation + 1, *counters)
        finite = jnp.isfinite(f)
        metrics = {
            "best_fitness": sign * best_f,
            "best_solution": best_x,
            "generation_best_fitness": sign * f[order[0]],
            "mean_fitness": sign * jnp.sum(jnp.where(finite, f, 0.0)) / jnp.maximum(finite.sum(), 1),
            "sigma": sigma_at(params, state.generation),
            "llm_queries": stats[0],
            "parse_failures": stats[1],
            "parse_failure_rate": stats[1] / jnp.maximum(stats[0], 1),
            "fallbacks": stats[2],
            "fallback_rate": stats[2] / len(blocks),
        }
        return new, metrics

    default_params = EvoLLMParams(
        sigma_init=jnp.asarray(0.1 * width if sigma_init is None else sigma_init, jnp.float32),
        sigma_decay=jnp.asarray(sigma_decay, jnp.float32),
        sigma_min=jnp.asarray(1e-3 * width if sigma_min is None else sigma_min, jnp.float32),
    )
    return Strategy(
        init=init,
        ask=ask,
        tell=tell,
        default_params=default_params,
        population_size=population_size,
        name="evollm",
        get_mean=lambda state: state.mean,
        materialize=lambda population: population,
    )


def __getattr__(name: str) -> Any:
    """The run loop moved to :mod:`eggroll.apps.evollm`; the old names still work, with a DeprecationWarning."""
    if name not in ("run", "RunInterrupted", "GenerationFailed", "run_settings"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    from eggroll.apps import evollm as app

    warnings.warn(f"{__name__}.{name} moved to {app.__name__}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(app, name)
