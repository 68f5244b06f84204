"""EvoLLM as a task of the one loop: ``eggroll evollm`` (:class:`BBOBTask`) and :func:`run` (the Python API).

:class:`EvoLLMTask` runs any strategy built by :func:`eggroll.strategies.evollm.evollm`
(any :class:`eggroll.types.Strategy` works) on a fitness function through
:func:`eggroll.run.loop.run`, which owns the generation loop, the checkpoints
(``<out>/checkpoints``: every ``checkpoint_every`` generations, on SIGTERM /
Ctrl-C, at the end), bit-for-bit resume, the metrics and the progress display.

The carry is ``{"state": EvoLLMState, "key": run key}``; generation ``g`` splits
the key it finds into the next key and its ask / tell keys, so a resumed run
draws the same keys (with a deterministic backend, greedy decoding, the result
equals an uninterrupted run's bit for bit).

A failed language-model call (an unreachable endpoint, a timeout) fails its
generation: the loop saves the last finished one (whatever ``checkpoint_every``
is) and raises :class:`~eggroll.run.loop.GenerationFailed`, one line naming the
error and the generation on disk, so ``resume`` loses nothing.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from eggroll.llm.cache import CachedBackend
from eggroll.llm.http import OpenAIBackend
from eggroll.llm.local import LocalBackend
from eggroll.run.loop import GenerationFailed, RunInterrupted, RunOptions, RunResult, Task, is_wall_clock
from eggroll.run.loop import run as run_loop
from eggroll.run.progress import console
from eggroll.run.train import strategy_settings
from eggroll.strategies.evollm import backend_error
from eggroll.types import Strategy

__all__ = ["FUNCTIONS", "BBOBTask", "EvoLLMTask", "GenerationFailed", "RunInterrupted", "run", "run_settings"]

FUNCTIONS = {"sphere": 1, "ellipsoid": 2, "rastrigin": 3, "rosenbrock": 8}


run_settings = strategy_settings  # what a resumed run must share with its checkpoint (its earlier name here)


class EvoLLMTask(Task):
    """A strategy on a fitness function (one solution -> a scalar, minimised) as a loop task.

    Args:
        strategy: built by :func:`eggroll.strategies.evollm.evollm`.
        fitness_fn: scores one solution; it is vmapped over the population.
        key: the run's PRNG key.
        mean: starting mean (default: the strategy's template solution).
        params: strategy params (default ``strategy.default_params``).
        settings: extra JSON a resumed run must match (the strategy's name,
            population size and scalar params are always compared).
        label: the progress display's label (default: the task's ``label``).
    """

    name = "evollm"
    label = "EvoLLM"
    may_change = (
        "--generations, --time-budget, --checkpoint-every, --cache, the endpoint (--base-url, --api-key-env, "
        "--timeout) and the output options (--plot, --show-prompt, --quiet)"
    )

    def __init__(
        self,
        strategy: Strategy,
        fitness_fn: Callable[[jax.Array], jax.Array],
        key: jax.Array,
        mean: jax.Array | None = None,
        params: Any = None,
        *,
        settings: dict[str, Any] | None = None,
        label: str | None = None,
    ):
        self.es, self.population_size = strategy, strategy.population_size
        self.params = strategy.default_params if params is None else params
        self._key, self._mean = key, mean
        self._settings = run_settings(strategy, self.params, settings)
        self.label = label or self.label
        self._ask, self._tell = jax.jit(strategy.ask), jax.jit(strategy.tell)
        self._evaluate = jax.jit(jax.vmap(fitness_fn))

    def settings(self) -> dict[str, Any]:
        return self._settings

    def init(self) -> dict[str, Any]:
        key, sub = jax.random.split(self._key)
        return {"state": self.es.init(sub, self._mean, self.params), "key": key}

    def step(self, carry, generation):
        next_key, k_ask, k_tell = jax.random.split(carry["key"], 3)
        population, state = self._ask(k_ask, carry["state"], self.params)
        try:
            state, metrics = self._tell(k_tell, population, self._evaluate(population), state, self.params)
            metrics = jax.device_get(metrics)  # a model error in the host callback surfaces by here, in this generation
        except jax.errors.JaxRuntimeError as err:
            original = backend_error(err)  # the backend's own exception (LLMConnectionError ...), not XLA's wrapper
            if original is None:
                raise
            raise original from err
        row = {name: np.asarray(value).item() for name, value in metrics.items() if np.ndim(value) == 0}
        if hasattr(state, "llm_queries"):
            row["total_llm_queries"] = int(state.llm_queries)
        return {"state": state, "key": next_key}, row

    def describe(self, row) -> str:
        best, failures = row.get("best_fitness"), row.get("parse_failures")
        text = f"best {float('nan') if best is None else best:.4g}"
        return text if failures is None else f"{text}  parse failures {failures}"

    def finish(self, carry, result: RunResult) -> dict[str, Any]:
        """The summary ``result.json`` records: best fitness and solution, final mean, counters, history."""
        state = carry["state"]
        record: dict[str, Any] = {"best_fitness": result.history[-1].get("best_fitness") if result.history else None}
        for name, field in [("best_solution", "best_x"), ("mean", "mean")]:
            if hasattr(state, field):
                record[name] = np.asarray(getattr(state, field), np.float64).tolist()
        counters = [("llm_queries", "llm_queries"), ("parse_failures", "llm_failures"), ("fallbacks", "fallbacks")]
        for name, field in counters:
            if hasattr(state, field):
                record[name] = int(getattr(state, field))
        record["history"] = _columns(result.history)
        return record


def _columns(history: list[dict[str, Any]], wall_clock: bool = False) -> dict[str, list[Any]]:
    """The rows of generations 1.. as one list per metric (no ``generation``; wall-clock fields only if asked)."""
    rows = [row for row in history if row["generation"] > 0]
    names = [k for k in (rows[0] if rows else {}) if k != "generation" and (wall_clock or not is_wall_clock(k))]
    return {name: [row.get(name) for row in rows] for name in names}


def run(
    strategy: Strategy,
    fitness_fn: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    num_generations: int,
    mean: jax.Array | None = None,
    params: Any = None,
    progress: bool = False,
    description: str = "EvoLLM",
    *,
    checkpoint_dir: Any = None,
    checkpoint_every: int | None = 1,
    resume: bool = False,
    log_dir: Any = None,
    settings: dict[str, Any] | None = None,
    time_budget: float | None = None,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Runs ``num_generations`` of ask / evaluate / tell through :func:`eggroll.run.loop.run`.

    With ``checkpoint_dir`` the strategy state (archive, mean, best, counters),
    the run's key, the generation and the history are saved there (orbax)
    every ``checkpoint_every`` generations, at the end and when SIGTERM /
    Ctrl-C arrives (the current generation finishes first, then
    :class:`RunInterrupted` is raised). A generation that fails raises
    :class:`GenerationFailed`; the generation before it is on disk (the loop
    saves it whatever the schedule). ``resume=True`` continues from the newest
    checkpoint; with a deterministic backend (greedy decoding) the final state
    equals that of an uninterrupted run, bit for bit.

    Args:
        strategy: built by :func:`eggroll.strategies.evollm.evollm` (any Strategy works).
        fitness_fn: scores one solution; it is vmapped over the population.
        key: PRNG key.
        num_generations: generations in total (a resumed run runs the rest).
        mean: starting mean (default: the strategy's template solution).
        params: strategy params (default: ``strategy.default_params``).
        progress: show the progress display with the best fitness.
        description: label of the progress display.
        checkpoint_dir: where checkpoints go (``None``: none).
        checkpoint_every: save every this many generations (``None``: only at
            the end and on a signal).
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        log_dir: write one row per generation there (``metrics.jsonl``,
            ``metrics.csv``, TensorBoard when tensorboardX is installed); a
            resumed run drops the rows after its checkpoint, so each generation
            appears once.
        settings: extra JSON settings a resumed run must share with the
            checkpoint (e.g. the fitness function and the model); the strategy's
            name, population size and scalar params are always compared.
        time_budget: seconds; stop early enough that the run ends within them.

    Returns:
        ``(state, history)`` where ``history`` maps each scalar metric (and
        ``seconds``) to a NumPy array over generations 1..``num_generations``.

    Raises:
        RunInterrupted: SIGTERM / Ctrl-C stopped the run (after saving).
        GenerationFailed: a generation raised (with ``checkpoint_dir``).
        ValueError: ``resume`` without ``checkpoint_dir``, a fresh run into a
            folder that already holds checkpoints, or a checkpoint written with
            other settings.
        eggroll.run.checkpoint.CheckpointError: an unusable checkpoint (or none to resume from).
    """
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the checkpoint folder of the run to continue)")
    task = EvoLLMTask(strategy, fitness_fn, key, mean, params, settings=settings, label=description)
    options = RunOptions(
        generations=num_generations,
        checkpoint_every=checkpoint_every,
        resume=resume,
        quiet=not progress,
        time_budget=time_budget,
    )
    result = run_loop(task, options, checkpoint_dir=checkpoint_dir, metrics_dir=log_dir)
    history = {name: np.asarray(values) for name, values in _columns(result.history, wall_clock=True).items()}
    if result.exit_code:  # SIGTERM / Ctrl-C, after the checkpoint
        raise RunInterrupted(result, state=result.carry["state"], history=history)
    return result.carry["state"], history


# ------------------------------------------------------------------ eggroll evollm: a COCO BBOB function


class BBOBTask(EvoLLMTask):
    """``eggroll evollm``: EvoLLM minimising a COCO BBOB function (``f - f_opt``) from a seeded start in [-4, 4]^D.

    ``function`` is a name (:data:`FUNCTIONS`) or a BBOB id 1-24. The backend is
    the local SmolLM2 model (loaded right before the first generation, after the
    loop checked the checkpoint) or any OpenAI-compatible endpoint
    (``base_url``). ``block_size``, ``resolution``, ``archive_size`` and
    ``temperature`` go to :func:`eggroll.strategies.evollm.evollm` (and are
    compared on resume). :meth:`finish` prints the summary table and writes
    ``<out>/evollm.png`` (or ``plot``).
    """

    def __init__(
        self,
        *,
        function: str = "sphere",
        dim: int = 2,
        instance: int = 1,
        population: int = 10,
        seed: int = 0,
        out: str | Path,
        base_url: str | None = None,
        model: str = "default",
        api: str = "completions",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        model_path: str | None = None,
        cache: str | None = None,
        show_prompt: bool = False,
        plot: str | Path | None = None,
        **strategy_options: Any,
    ):
        from eggroll.problems.bbob import FUNCTION_NAMES, bbob_function
        from eggroll.strategies.evollm import evollm

        fid = int(function) if function.isdigit() else FUNCTIONS.get(function.lower())
        if fid is None or not 1 <= fid <= 24:
            raise ValueError(f"--function {function!r}: use one of {', '.join(FUNCTIONS)} or a BBOB id 1-24")
        if api not in ("completions", "chat"):
            raise ValueError(f"--api must be completions or chat, got {api!r}")
        if not strategy_options.get("temperature", 0.0) >= 0:
            raise ValueError(f"--temperature must be >= 0 (0: greedy), got {strategy_options['temperature']}")
        if not timeout > 0:  # NaN too
            raise ValueError(f"--timeout must be a positive number of seconds, got {timeout!r}")
        given = {k: p.default for k, p in inspect.signature(evollm).parameters.items()} | strategy_options
        elites, archive = given["elites_per_generation"], given["archive_size"]
        if elites > min(archive, population):  # the strategy's own check, in the command's option names
            raise ValueError(
                f"--archive-size ({archive}) and --population ({population}) must each be >= {elites}: EvoLLM adds "
                f"the {elites} best members of every generation to the archive"
            )
        settings = {"function": fid, "dim": dim, "instance": instance, "population": population, "seed": seed}
        settings.update(strategy_options)
        settings["model"] = f"{model} ({api})" if base_url else (model_path or "smollm2-135m-instruct")
        batch_f = bbob_function(fid, instance, dim, subtract_fopt=True)
        self.f = lambda x: batch_f(x[None])[0]  # one solution -> f - f_opt
        key = jax.random.key(seed)
        self.start = jax.random.uniform(jax.random.fold_in(key, 1), (dim,), minval=-4.0, maxval=4.0)
        self._local = None if base_url else LocalBackend(model_path)  # loaded right before the first generation
        backend = self._local or OpenAIBackend(base_url, model, api=api, api_key_env=api_key_env, timeout=timeout)
        backend = CachedBackend(backend, cache) if cache else backend
        self.backend_name = backend.name
        self.recorder = _Recorder(backend) if show_prompt else None
        self.plot = Path(plot) if plot else Path(out) / "evollm.png"
        self.label = f"f{fid} {FUNCTION_NAMES[fid]}, D={dim}, instance {instance}"  # also the plot's and table's title
        es = evollm(population, self.start, self.recorder or backend, **strategy_options)
        super().__init__(es, self.f, key, self.start, settings=settings)

    def step(self, carry, generation):
        if self._local is not None:  # this process's first generation: the checkpoint is checked, load the model
            local, self._local = self._local, None
            t = time.perf_counter()
            local.load()
            console.print(f"loaded the local model in {time.perf_counter() - t:.1f} s")
        return super().step(carry, generation)

    def finish(self, carry, result: RunResult) -> dict[str, Any]:
        from rich.table import Table

        record = super().finish(carry, result)
        record["start"] = np.asarray(self.start, np.float64).tolist()
        record["files"] = {"plot": str(_plot(record["history"], self.label, self.plot))}
        columns = ["start f - f_opt", "best f - f_opt", "final mean f - f_opt", "parse failures", "fallbacks"]
        table = Table(*columns, title=f"EvoLLM on {self.label} ({self.backend_name})")
        queries = max(record["llm_queries"], 1)
        table.add_row(
            f"{float(self.f(self.start)):.4g}",
            "-" if record["best_fitness"] is None else f"{record['best_fitness']:.4g}",
            f"{float(self.f(carry['state'].mean)):.4g}",
            f"{record['parse_failures']}/{queries} ({record['parse_failures'] / queries:.1%})",
            f"{record['fallbacks']} blocks",
        )
        console.print(table)
        console.print(f"best solution: {np.round(record['best_solution'], 4).tolist()}")
        if self.recorder is not None and self.recorder.last is not None:
            console.print("[bold]last prompt[/bold]\n" + self.recorder.last[0], markup=True, highlight=False)
            console.print(f"[bold]answer[/bold] {self.recorder.last[1]!r}", highlight=False)
        return record


class _Recorder:
    """Keeps the last prompt and answer for --show-prompt."""

    def __init__(self, backend):
        self.backend, self.name, self.last = backend, backend.name, None

    def generate(self, prompts, **kwargs):
        texts = self.backend.generate(prompts, **kwargs)
        self.last = (prompts[-1], texts[-1])
        return texts


def _plot(history: dict[str, list], title: str, path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    generations = np.arange(1, len(history.get("best_fitness", [])) + 1)
    ax.plot(generations, history.get("best_fitness", []), label="best so far")
    ax.plot(generations, history.get("generation_best_fitness", []), label="generation best", alpha=0.6)
    ax.set(yscale="log", xlabel="generation", ylabel="f - f_opt")
    ax.set_title(f"EvoLLM: {title}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    return path
