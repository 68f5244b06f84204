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

A failed language-model call (an unreachable endpoint, a timeout) raises
:class:`GenerationFailed` out of the loop: one line naming the error and the
last generation on disk. The loop saves the last finished generation before
the error leaves it (whatever ``checkpoint_every`` is), so ``resume`` loses
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from eggroll.run.loop import RunOptions, RunResult, Task, is_wall_clock
from eggroll.run.loop import run as run_loop
from eggroll.types import Strategy

__all__ = [
    "FUNCTIONS",
    "BBOBTask",
    "EvoLLMTask",
    "GenerationFailed",
    "RunInterrupted",
    "default_out",
    "function_id",
    "run",
    "run_settings",
]

FUNCTIONS = {"sphere": 1, "ellipsoid": 2, "rastrigin": 3, "rosenbrock": 8}


class RunInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped :func:`run` after a finished generation, which was checkpointed.

    Attributes:
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        generation: the last finished (and saved) generation.
        checkpoint_dir: where the checkpoint is (``None``: no checkpoints were asked for).
        state: the strategy state after ``generation``.
        history: the metrics so far (as :func:`run` returns them).
    """

    def __init__(self, signal_name: str, generation: int, checkpoint_dir: str | None, state: Any, history: dict):
        saved = (
            f"checkpoint saved in {checkpoint_dir}. Continue with resume=True (on the command line: the same "
            "command plus --resume)."
            if checkpoint_dir
            else "nothing was saved (no checkpoint_dir)."
        )
        super().__init__(f"stopped by {signal_name} after generation {generation}; {saved}")
        self.signal_name, self.generation, self.checkpoint_dir = signal_name, generation, checkpoint_dir
        self.state, self.history = state, history

    @property
    def exit_code(self) -> int:
        """The shell convention: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
        return 130 if self.signal_name == "SIGINT" else 143


class GenerationFailed(RuntimeError):
    """A generation failed (e.g. the language model became unreachable).

    The previous generation is on disk (the loop saves it when a generation
    raises), so a resumed run loses nothing. ``__cause__`` is the original error.

    Attributes:
        generation: the generation that failed.
        saved_generation: the newest checkpointed generation (``None``: none).
        cause: a one-line description of the original error.
    """

    def __init__(self, generation: int, saved_generation: int | None, checkpoint_dir: str, cause: str):
        if saved_generation:
            saved = (
                f"Generation {saved_generation} is saved in {checkpoint_dir}; once the backend works again, "
                "continue with resume=True (on the command line: the same command plus --resume)"
            )
            if saved_generation < generation - 1:
                first, last = saved_generation + 1, generation - 1
                saved += f", which runs generation{f's {first}-{last}' if last > first else f' {first}'} again"
        else:
            saved = "No generation is saved, so there is nothing to resume; start again once the backend works"
        cause = cause.rstrip(". ")
        super().__init__(f"generation {generation} failed: {cause}{'' if cause.endswith('?') else '.'} {saved}.")
        self.generation, self.saved_generation, self.cause = generation, saved_generation, cause


def _one_line(err: BaseException) -> str:
    """The original error of ``err`` in one line (a host callback's error arrives as its traceback text)."""
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:  # io_callback: the message ends with "Type: message"
        text = [line for line in text.splitlines() if line.strip()][-1].strip()
    text = text.splitlines()[0] if text else ""
    return text or type(err).__name__


def run_settings(strategy: Strategy, params: Any, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint (JSON): strategy, population, scalar params, ``settings``."""
    out: dict[str, Any] = {"strategy": strategy.name, "population_size": int(strategy.population_size)}
    if hasattr(params, "_asdict"):
        for name, value in params._asdict().items():
            if np.size(value) == 1:
                out[name] = float(np.asarray(value).reshape(()))
    out.update(settings or {})
    return out


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
        label: the progress display's label.
        checkpoint_dir, checkpoint_every: where and how often the loop saves
            (only to say which generation is on disk when one fails).
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
        *,
        mean: jax.Array | None = None,
        params: Any = None,
        settings: dict[str, Any] | None = None,
        label: str | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
    ):
        self.es, self.fitness_fn, self.population_size = strategy, fitness_fn, strategy.population_size
        self.params = strategy.default_params if params is None else params
        self._key, self._mean = key, mean
        self._settings = run_settings(strategy, self.params, settings)
        self.label = label or self.label
        self._ask, self._tell = jax.jit(strategy.ask), jax.jit(strategy.tell)
        self._evaluate = jax.jit(jax.vmap(fitness_fn))
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, checkpoint_every
        self._start: int | None = None  # the generation this process started from (a resume's checkpoint)

    def settings(self) -> dict[str, Any]:
        return self._settings

    def init(self) -> dict[str, Any]:
        key, sub = jax.random.split(self._key)
        return {"state": self.es.init(sub, self._mean, self.params), "key": key}

    def before_first_step(self) -> None:
        """Called once, right before this process's first generation (after the loop checked the checkpoint)."""

    def step(self, carry, generation):
        if self._start is None:
            self._start = generation - 1
            self.before_first_step()
        next_key, k_ask, k_tell = jax.random.split(carry["key"], 3)
        try:
            population, state = self._ask(k_ask, carry["state"], self.params)
            state, metrics = self._tell(k_tell, population, self._evaluate(population), state, self.params)
            metrics = jax.device_get(metrics)  # a model error in the host callback surfaces by here
        except Exception as err:
            if self.checkpoint_dir is None:
                raise
            saved = self._saved(generation)
            raise GenerationFailed(generation, saved, str(self.checkpoint_dir), _one_line(err)) from err
        row = {name: np.asarray(value).item() for name, value in metrics.items() if np.ndim(value) == 0}
        if hasattr(state, "llm_queries"):
            row["total_llm_queries"] = int(state.llm_queries)
        return {"state": state, "key": next_key}, row

    @staticmethod
    def _saved(generation: int) -> int | None:
        """The newest generation on disk when ``generation`` fails (the loop saves the last finished one)."""
        return generation - 1 or None

    def describe(self, row) -> str:
        best = row.get("best_fitness")
        text = f"best {float('nan') if best is None else best:.4g}"
        if row.get("parse_failures") is not None:
            text += f"  parse failures {row['parse_failures']}"
        return text

    def finish(self, carry, result: RunResult) -> dict[str, Any]:
        """The summary ``result.json`` records: best fitness and solution, final mean, counters, history."""
        state = carry["state"]
        rows = [row for row in result.history if row["generation"] > 0]
        record: dict[str, Any] = {"best_fitness": rows[-1].get("best_fitness") if rows else None}
        for name, field in [("best_solution", "best_x"), ("mean", "mean")]:
            if hasattr(state, field):
                record[name] = np.asarray(getattr(state, field), np.float64).tolist()
        counters = [("llm_queries", "llm_queries"), ("parse_failures", "llm_failures"), ("fallbacks", "fallbacks")]
        for name, field in counters:
            if hasattr(state, field):
                record[name] = int(getattr(state, field))
        record["history"] = _columns(rows)
        return record


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows -> one list per metric (without ``generation`` and wall-clock fields)."""
    names = [k for k in (rows[0] if rows else {}) if k != "generation" and not is_wall_clock(k)]
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
        eggroll.run.checkpoint.CheckpointError: an unusable checkpoint.
    """
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the checkpoint folder of the run to continue)")
    every = checkpoint_every if checkpoint_dir is not None else None
    task = EvoLLMTask(
        strategy,
        fitness_fn,
        key,
        mean=mean,
        params=params,
        settings=settings,
        label=description,
        checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir).absolute(),
        checkpoint_every=every,
    )
    options = RunOptions(
        generations=num_generations, checkpoint_every=every, resume=resume, quiet=not progress, time_budget=time_budget
    )
    result = run_loop(task, options, checkpoint_dir=checkpoint_dir, metrics_dir=log_dir)
    rows = [row for row in result.history if row["generation"] > 0]
    names = [k for k in (rows[0] if rows else {}) if k != "generation"]
    history = {name: np.asarray([row.get(name) for row in rows]) for name in names}
    state = result.carry["state"]
    if result.stopped_by in ("SIGTERM", "SIGINT"):
        raise RunInterrupted(result.stopped_by, result.generation, result.checkpoint_dir, state, history)
    return state, history


# ------------------------------------------------------------------ eggroll evollm: a COCO BBOB function


def function_id(name: str) -> int:
    """A BBOB function id from a name (``sphere``, ``ellipsoid``, ``rastrigin``, ``rosenbrock``) or ``1``-``24``."""
    if name.isdigit() and 1 <= int(name) <= 24:
        return int(name)
    if name.lower() in FUNCTIONS:
        return FUNCTIONS[name.lower()]
    raise ValueError(f"--function {name!r}: use one of {', '.join(FUNCTIONS)} or a BBOB id 1-24")


def default_out(function: str, dim: int) -> Path:
    """``runs/evollm/<function>-<dim>d``."""
    name = function.lower() if not function.isdigit() else f"f{function_id(function)}"
    return Path("runs") / "evollm" / f"{name}-{dim}d"


def _has_checkpoint(directory: Path) -> bool:
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


class BBOBTask(EvoLLMTask):
    """``eggroll evollm``: EvoLLM minimising a COCO BBOB function (``f - f_opt``) from a seeded start in [-4, 4]^D.

    The backend is the local SmolLM2 model (loaded right before the first
    generation, after the loop checked the checkpoint) or any OpenAI-compatible
    endpoint (``base_url``). :meth:`finish` prints the summary table and writes
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
        checkpoint_every: int | None = 1,
        resume: bool = False,
        base_url: str | None = None,
        model: str = "default",
        api: str = "completions",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        model_path: str | None = None,
        cache: str | None = None,
        block_size: int = 4,
        resolution: int = 1000,
        archive_size: int = 10,
        temperature: float = 0.0,
        show_prompt: bool = False,
        plot: str | Path | None = None,
    ):
        from eggroll.problems.bbob import FUNCTION_NAMES, bbob_function
        from eggroll.strategies.evollm import evollm

        fid = function_id(function)
        out = Path(out)
        checkpoint_dir = (out / "checkpoints").absolute()
        if resume and not _has_checkpoint(checkpoint_dir):  # the loop would start afresh: say where they are
            raise ValueError(
                f"No finished checkpoint in {checkpoint_dir}. eggroll evollm keeps them in <out>/checkpoints: pass "
                f"the run's --out (here {out}), or start without --resume"
            )
        settings = {
            "function": fid,
            "dim": dim,
            "instance": instance,
            "population": population,
            "seed": seed,
            "block_size": block_size,
            "resolution": resolution,
            "archive_size": archive_size,
            "temperature": temperature,
            "model": f"{model} ({api})" if base_url else (model_path or "smollm2-135m-instruct"),
        }
        self.f = bbob_function(fid, instance, dim, subtract_fopt=True)
        key = jax.random.key(seed)
        self.start = jax.random.uniform(jax.random.fold_in(key, 1), (dim,), minval=-4.0, maxval=4.0)
        self._local = None
        if base_url:
            from eggroll.llm.http import OpenAIBackend

            backend = OpenAIBackend(base_url, model, api=api, api_key_env=api_key_env, timeout=timeout)
        else:
            from eggroll.llm.local import LocalBackend

            backend = self._local = LocalBackend(model_path)
        if cache:
            from eggroll.llm.cache import CachedBackend

            backend = CachedBackend(backend, cache)
        self.seen: list[tuple[str, str]] = []
        self.backend_name = backend.name
        self.show_prompt = show_prompt
        if show_prompt:
            backend = _Recorder(backend, self.seen)
        self.plot = plot
        self.title = f"f{fid} {FUNCTION_NAMES[fid]}, D={dim}, instance {instance}"
        es = evollm(
            population,
            self.start,
            backend,
            block_size=block_size,
            resolution=resolution,
            archive_size=archive_size,
            temperature=temperature,
        )
        super().__init__(
            es,
            lambda x: self.f(x[None])[0],
            key,
            mean=self.start,
            settings=settings,
            label=self.title,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
        )

    def before_first_step(self) -> None:
        if self._local is not None:
            import time

            from eggroll.run.progress import console

            t = time.perf_counter()
            self._local.load()
            console.print(f"loaded the local model in {time.perf_counter() - t:.1f} s")

    def finish(self, carry, result: RunResult) -> dict[str, Any]:
        from rich.table import Table

        from eggroll.run.progress import console

        record = super().finish(carry, result)
        state = carry["state"]
        plot = Path(self.plot) if self.plot else Path(result.out) / "evollm.png"
        record["start"] = np.asarray(self.start, np.float64).tolist()
        record["files"] = {"plot": str(_plot(record["history"], self.title, plot))}
        table = Table(title=f"EvoLLM on {self.title} ({self.backend_name})")
        for column in ["start f - f_opt", "best f - f_opt", "final mean f - f_opt", "parse failures", "fallbacks"]:
            table.add_column(column)
        queries = max(record["llm_queries"], 1)
        best = record["best_fitness"]
        table.add_row(
            f"{float(self.f(self.start[None])[0]):.4g}",
            "-" if best is None else f"{best:.4g}",
            f"{float(self.f(state.mean[None])[0]):.4g}",
            f"{record['parse_failures']}/{queries} ({record['parse_failures'] / queries:.1%})",
            f"{record['fallbacks']} blocks",
        )
        console.print(table)
        console.print(f"best solution: {np.round(record['best_solution'], 4).tolist()}")
        if self.show_prompt and self.seen:
            console.print("[bold]last prompt[/bold]\n" + self.seen[-1][0], markup=True, highlight=False)
            console.print(f"[bold]answer[/bold] {self.seen[-1][1]!r}", highlight=False)
        return record


class _Recorder:
    """Keeps the last prompt and answer for --show-prompt."""

    def __init__(self, backend, seen):
        self.backend, self.seen, self.name = backend, seen, backend.name

    def generate(self, prompts, **kwargs):
        texts = self.backend.generate(prompts, **kwargs)
        self.seen.append((prompts[-1], texts[-1]))
        return texts


def _plot(history: dict[str, list], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    generations = np.arange(1, len(history.get("best_fitness", [])) + 1)
    ax.plot(generations, history.get("best_fitness", []), label="best so far")
    ax.plot(generations, history.get("generation_best_fitness", []), label="generation best", alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("f - f_opt")
    ax.set_title(f"EvoLLM: {title}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path
