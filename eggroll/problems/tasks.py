"""Verifiable reward tasks for fine-tuning language models with evolution strategies.

A task hands out prompts (:class:`Example`) and scores completions. Because ES
needs nothing but a number per member, any reward works: exact answers checked
by a program (Countdown and other `reasoning-gym` datasets, all offline),
format following, length, or your own Python function.

Members of a population share prompts: :func:`assign_prompts` gives each group
of ``group_size`` members the same prompts, so the strategy can compare members
on equal inputs (group-normalised rewards, EGGROLL's ``group_size`` shaping).

Example:
    >>> task = make_task("chain_sum")
    >>> ex = task.examples(1, seed=0)[0]
    >>> task.reward(f"<answer>{ex.answer}</answer>", ex)
    1.1
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
ANSWER_INSTRUCTION = "Put your final answer inside <answer></answer> tags, for example <answer>42</answer>."
MAX_ANSWER_CHARS = 1000  # a longer answer is scored as an empty one (some verifiers parse it: a huge one could hang)
# Verifiers that evaluate the answer with sympy (Python's eval underneath) only see plain arithmetic: digits,
# + - * / ( ) and spaces, no power (9**9**9 would hang), at most 200 characters; anything else is scored as empty.
_ARITHMETIC = re.compile(r"(?!.*\*\*)[0-9+\-*/() ]{1,200}")
SAFE_ANSWERS = {"countdown": _ARITHMETIC, "puzzle24": _ARITHMETIC}
_MATH_CALLS = frozenset(
    ["sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "exp", "log", "ln", "sqrt"]
)
_PLAIN = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.Compare, ast.List, ast.Tuple)
_PLAIN += (ast.operator, ast.unaryop, ast.cmpop)


def could_run_code(answer: str) -> bool:
    """Whether a verifier that evaluates ``answer`` (Python's ``eval``, sympy's ``parse_expr``; several
    reasoning-gym datasets do) could run code: a ``__`` anywhere (the way to builtins, even in text sympy
    rewrites), or, read as Python, a call of anything but a math function, an attribute, a subscript, a lambda, or a
    power whose exponent is not small (``9**9**9`` would hang). Plain text and arithmetic are not code."""
    if "__" in answer:
        return True
    try:
        tree = ast.parse(answer.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return False  # not Python: an eval of it fails before anything runs
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _MATH_CALLS) or node.keywords:
                return True
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            small = all(
                not isinstance(n, ast.Constant) or (isinstance(n.value, int | float) and abs(n.value) <= 100)
                for n in ast.walk(node.right)
            )
            if not small or any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node.right)):
                return True
        elif not isinstance(node, _PLAIN):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt and what its scorer needs.

    Attributes:
        prompt: the user message.
        answer: a reference answer (for display; scoring may accept others).
        data: task-specific payload (e.g. the reasoning-gym entry).
    """

    prompt: str
    answer: str | None = None
    data: Any = None


def extract_answer(completion: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` in ``completion``, stripped, or None."""
    found = ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


class Task:
    """Base class: a source of prompts plus a reward.

    Attributes:
        name: short name.
        system: system message for the chat template (None: the model's default).
        max_new_tokens: a sensible generation budget for this task.
    """

    name: str = "task"
    system: str | None = None
    max_new_tokens: int = 64

    def examples(self, n: int, seed: int) -> list[Example]:
        """``n`` examples, a deterministic function of ``seed``."""
        raise NotImplementedError

    def reward(self, completion: str, example: Example) -> float:
        """Reward of one completion (higher is better)."""
        raise NotImplementedError

    def correct(self, completion: str, example: Example) -> bool:
        """Whether the completion solves the example (for accuracy); default: full reward."""
        return self.reward(completion, example) >= self.max_reward - 1e-9

    max_reward: float = 1.0

    def rewards(self, completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
        """Rewards of paired completions and examples, float32."""
        return np.asarray([self.reward(c, e) for c, e in zip(completions, examples, strict=True)], np.float32)


class ReasoningGymTask(Task):
    """Any `reasoning-gym` dataset, scored by its own verifier.

    The prompt is the dataset's question plus an instruction to put the answer in
    ``<answer>`` tags. Reward (Qiu et al. 2025 style) = ``format_weight`` if the
    tags are present + the dataset's score of the tagged answer (1.0 when right;
    some datasets give partial credit). Without tags the last line is scored,
    so a right but untagged answer still counts (without the format bonus).
    The model's answer is untrusted: one longer than ``MAX_ANSWER_CHARS``, one that could run code if a
    verifier evaluated it (:func:`could_run_code`; several reasoning-gym verifiers call ``eval`` or
    sympy), or for ``countdown`` and ``puzzle24`` anything but plain arithmetic, is scored as an empty
    answer (the dataset's score of a malformed one).

    Args:
        dataset: reasoning-gym dataset name (``"countdown"``, ``"chain_sum"`` ...).
        format_weight: bonus for using the answer tags.
        max_new_tokens: generation budget.
        **config: passed to ``reasoning_gym.create_dataset`` (difficulty settings).
    """

    def __init__(self, dataset: str, format_weight: float = 0.1, max_new_tokens: int = 96, **config: Any):
        import reasoning_gym

        if dataset not in reasoning_gym.factory.DATASETS:
            known = ", ".join(sorted(reasoning_gym.factory.DATASETS)[:12])
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r} (some known ones: {known}, ...)")
        self.name = dataset
        self.dataset = dataset
        self.config = config
        self.format_weight = float(format_weight)
        self.max_new_tokens = max_new_tokens
        self.max_reward = 1.0 + self.format_weight
        self.system = "You are a careful assistant. Think briefly, then give the final answer."
        self._scorer = reasoning_gym.create_dataset(dataset, size=1, seed=0, **config)

    def examples(self, n: int, seed: int) -> list[Example]:
        import reasoning_gym

        ds = reasoning_gym.create_dataset(self.dataset, size=n, seed=int(seed) % (2**31), **self.config)
        return [
            Example(prompt=f"{e['question']}\n\n{ANSWER_INSTRUCTION}", answer=str(e["answer"]), data=e)
            for e in (ds[i] for i in range(n))
        ]

    def _score(self, completion: str, example: Example) -> tuple[float, bool]:
        answer = extract_answer(completion)
        tagged = answer is not None
        if answer is None:
            lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
            answer = lines[-1] if lines else ""
        safe = SAFE_ANSWERS.get(self.dataset)
        unsafe = (safe is not None and not safe.fullmatch(answer)) or could_run_code(answer)
        if len(answer) > MAX_ANSWER_CHARS or unsafe:
            answer = ""  # never handed to the verifier
        try:
            score = float(self._scorer.score_answer(answer, example.data))
        except Exception:  # a malformed answer must never crash a run
            score = 0.0
        return score, tagged

    def reward(self, completion: str, example: Example) -> float:
        score, tagged = self._score(completion, example)
        return self.format_weight * tagged + score

    def correct(self, completion: str, example: Example) -> bool:
        return self._score(completion, example)[0] >= 1.0


class FormatTask(ReasoningGymTask):
    """Format following: answer with exactly ``<answer>NUMBER</answer>`` (chain-sum questions).

    Reward: 1.0 for a reply that is only the tagged number, 0.5 for tags
    somewhere in the reply, 0.25 for a short untagged reply (at most 4 words) with a
    number in it, 0 otherwise; correctness of the number is ignored
    (use ``chain_sum`` for that). An easy reward a small model learns quickly.
    """

    _exact = re.compile(r"\s*<answer>\s*-?[0-9]+(\.[0-9]+)?\s*</answer>\s*")  # ASCII digits only

    def __init__(self, max_new_tokens: int = 24):
        super().__init__("chain_sum", format_weight=0.0, max_new_tokens=max_new_tokens)
        self.name = "format"
        self.max_reward = 1.0
        self.system = None

    def examples(self, n: int, seed: int) -> list[Example]:
        exs = super().examples(n, seed)
        instruction = "Reply with only the number inside <answer></answer> tags, nothing else."
        return [dataclasses.replace(e, prompt=f"{e.data['question']}\n{instruction}") for e in exs]

    def reward(self, completion: str, example: Example) -> float:
        if self._exact.fullmatch(completion):
            return 1.0
        if extract_answer(completion) is not None:
            return 0.5
        short = len(completion.split()) <= 4 and re.search(r"[0-9]", completion) is not None
        return 0.25 if short else 0.0

    def correct(self, completion: str, example: Example) -> bool:
        return self.reward(completion, example) >= 1.0


_TOPICS = [
    "the sea",
    "autumn",
    "a city at night",
    "coffee",
    "a lost key",
    "mountains",
    "rain",
    "a library",
    "bicycles",
    "the moon",
    "bread",
    "a train journey",
    "snow",
    "a garden",
    "music",
    "an old photograph",
    "the desert",
    "friendship",
    "a thunderstorm",
    "the first day of school",
    "a lighthouse",
    "a market",
    "clocks",
    "rivers",
]


class LengthTask(Task):
    """Write about a topic in about ``target_words`` words; reward ``max(0, 1 - |words - target| / target)``."""

    def __init__(self, target_words: int = 10, max_new_tokens: int = 48):
        self.name = "length"
        self.target = int(target_words)
        self.max_new_tokens = max_new_tokens
        self.max_reward = 1.0

    def examples(self, n: int, seed: int) -> list[Example]:
        rng = np.random.default_rng(seed)
        topics = rng.choice(len(_TOPICS), size=n)
        return [Example(prompt=f"Write one sentence about {_TOPICS[t]}.", data=_TOPICS[t]) for t in topics]

    def reward(self, completion: str, example: Example) -> float:
        words = len(completion.split())
        return max(0.0, 1.0 - abs(words - self.target) / self.target)


class PythonTask(Task):
    """Your own reward: ``reward_fn(completion: str, prompt: str) -> float`` over given prompts.

    Args:
        reward_fn: the reward (higher is better); exceptions count as reward 0.
        prompts: the prompt pool, or a task whose prompts to reuse.
        max_new_tokens: generation budget.
        max_reward: the reward of a perfect completion (accuracy counts those).
        name: display name.
    """

    def __init__(
        self,
        reward_fn: Callable[[str, str], float],
        prompts: Sequence[str] | Task,
        max_new_tokens: int = 64,
        max_reward: float = 1.0,
        name: str = "python",
    ):
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
        if not isinstance(prompts, Task) and len(prompts) == 0:
            raise ValueError("PythonTask needs at least one prompt")
        self.fn = reward_fn
        self.pool = prompts
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.max_reward = max_reward
        self.system = prompts.system if isinstance(prompts, Task) else None

    def examples(self, n: int, seed: int) -> list[Example]:
        if isinstance(self.pool, Task):
            return self.pool.examples(n, seed)
        rng = np.random.default_rng(seed)
        return [Example(prompt=self.pool[i]) for i in rng.integers(0, len(self.pool), size=n)]

    def reward(self, completion: str, example: Example) -> float:
        try:
            return float(self.fn(completion, example.prompt))
        except Exception:
            return 0.0


def load_reward_fn(spec: str) -> Callable[[str, str], float]:
    """Load ``"path/to/file.py:function"`` or ``"package.module:function"``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed ``spec``, a file or module that fails to import (naming it and the error),
            or no callable of that name in it.
    """
    if ":" not in spec:
        raise ValueError(f"reward function {spec!r} must look like 'file.py:function' or 'module:function'")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") and not os.path.isfile(where):
        raise FileNotFoundError(f"reward file {where!r} does not exist")
    try:
        if where.endswith(".py"):
            mod_spec = importlib.util.spec_from_file_location(f"_eggroll_reward_{abs(hash(where))}", where)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as err:  # a syntax error, or one its code raises: the user's file, not eggroll
        raise ValueError(f"reward {where!r} failed to import: {type(err).__name__}: {err}; fix it and retry") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{where!r} has no callable {name!r}")
    return fn


TASKS = {
    "countdown": lambda: ReasoningGymTask(
        "countdown", min_numbers=3, max_numbers=4, min_target=10, max_target=100, max_value=50, max_new_tokens=96
    ),
    "countdown-hard": lambda: ReasoningGymTask("countdown", max_new_tokens=192),
    "chain_sum": lambda: ReasoningGymTask("chain_sum", max_new_tokens=48),
    "basic_arithmetic": lambda: ReasoningGymTask("basic_arithmetic", max_new_tokens=64),
    "letter_counting": lambda: ReasoningGymTask("letter_counting", max_new_tokens=64),
    "spell_backward": lambda: ReasoningGymTask("spell_backward", max_new_tokens=32),
    "format": FormatTask,
    "length": LengthTask,
}


def make_task(name: str, reward: str | None = None, prompts: Sequence[str] | None = None) -> Task:
    """A task by name (see ``TASKS``), or a custom one.

    Args:
        name: a key of ``TASKS``, or any reasoning-gym dataset name, or ``"python"``.
        reward: ``"file.py:function"`` computing ``fn(completion, prompt) -> float``; needed for ``"python"``.
            With another ``name``, that task's prompts (and generation budget) are scored by this function.
        prompts: for ``"python"``: the prompt pool (default: the prompts of ``chain_sum``).
    """
    if name == "python" or reward is not None:
        if reward is None:
            raise ValueError("task 'python' needs reward='file.py:function'")
        if name == "python":
            return PythonTask(load_reward_fn(reward), list(prompts) if prompts else make_task("chain_sum"))
        if prompts:
            raise ValueError(f"prompts= is for task 'python'; task {name!r} brings its own prompts")
        pool = make_task(name)
        return PythonTask(load_reward_fn(reward), pool, pool.max_new_tokens, name=f"{pool.name} scored by {reward}")
    if name in TASKS:
        return TASKS[name]()
    try:
        return ReasoningGymTask(name)
    except ValueError as e:
        raise ValueError(
            f"unknown task {name!r}: use one of {', '.join(TASKS)}, python, or a reasoning-gym dataset"
        ) from e


def assign_prompts(examples: Sequence[Example], population_size: int, group_size: int) -> list[list[Example]]:
    """Give each group of ``group_size`` consecutive members the same prompts.

    With ``G = population_size // group_size`` groups and ``len(examples) = G * m``,
    group ``g`` answers examples ``[g*m, (g+1)*m)``; every member answers ``m``
    prompts.

    Returns:
        ``population_size`` lists of ``m`` examples.
    """
    if population_size % group_size:
        raise ValueError(f"group_size={group_size} must divide population_size={population_size}")
    groups = population_size // group_size
    if len(examples) % groups:
        raise ValueError(f"{len(examples)} prompts cannot be split evenly over {groups} groups of members")
    m = len(examples) // groups
    return [list(examples[(i // group_size) * m : (i // group_size + 1) * m]) for i in range(population_size)]
