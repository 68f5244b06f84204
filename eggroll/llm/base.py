"""The small protocol every EvoLLM language-model backend implements.

A backend turns a batch of text prompts into a batch of completions::

    texts = backend.generate(["x: 1,2 f: 3.0\\nx:"], temperature=0.0, max_tokens=24,
                             stop=["\\n"], seed=0)

That is the whole contract. The local JAX model (:mod:`eggroll.llm.local`), the
OpenAI-compatible HTTP client (:mod:`eggroll.llm.http`) and the response cache
(:mod:`eggroll.llm.cache`, which wraps another backend) all satisfy it, and so
does any object with a matching ``generate`` method (a ``typing.Protocol``, so no
inheritance is needed). :class:`FunctionBackend` adapts a plain Python function.

eggroll's own backends share one ``generate`` (:class:`Backend`): it checks the arguments
(:func:`check_generate_args`), asks the backend's ``_complete`` for the texts and cuts each
at its first stop string (:func:`truncate_at_stop`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable


class LLMError(RuntimeError):
    """A language-model backend could not produce an answer."""


class LLMConnectionError(LLMError):
    """An endpoint could not be reached, timed out, or kept failing after retries."""


@runtime_checkable
class LLMBackend(Protocol):
    """Batched text completion: prompts in, texts out (one per prompt, same order).

    Attributes:
        name: a short identifier (model and endpoint) used in cache keys and logs.
    """

    name: str

    def generate(
        self,
        prompts: Sequence[str],
        *,
        temperature: float = 0.0,
        max_tokens: int = 32,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[str]:
        """Completes every prompt.

        Args:
            prompts: the texts to continue.
            temperature: sampling temperature; 0 means greedy decoding.
            max_tokens: the most new tokens per completion.
            stop: strings that end a completion; the returned text stops before
                the first of them.
            seed: seed for sampling (ignored when greedy): the same prompts with
                the same seed give the same answers. The HTTP client sends
                ``seed + i`` for prompt ``i``; the local model samples the batch
                from one key, so a prompt's sample depends on its batch (such a
                backend sets ``seeds_per_prompt = False``, see :class:`Backend`).

        Returns:
            One completion per prompt, without the prompt itself.

        Raises:
            LLMError: the backend could not answer (``LLMConnectionError`` for
                unreachable endpoints and timeouts).
        """
        ...


class Backend:
    """What eggroll's own backends share: :meth:`generate` checks the arguments, asks the subclass's
    ``_complete`` for the texts and cuts each at its first stop string (the contract: :class:`LLMBackend`).

    Attributes:
        name: see :class:`LLMBackend`.
        seeds_per_prompt: ``True`` when prompt ``i`` of a batch is sampled from ``seed + i`` alone, so its
            answer does not depend on the rest of the batch; ``False`` for a backend that samples the whole
            batch from one key (:class:`eggroll.llm.local.LocalBackend`). The response cache reads it.
    """

    name: str
    seeds_per_prompt: bool = True

    def generate(
        self,
        prompts: Sequence[str],
        *,
        temperature: float = 0.0,
        max_tokens: int = 32,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[str]:
        """Completes every prompt (see :meth:`LLMBackend.generate`)."""
        prompts = check_generate_args(prompts, temperature, max_tokens)
        return [truncate_at_stop(text, stop) for text in self._complete(prompts, temperature, max_tokens, stop, seed)]

    def _complete(
        self, prompts: list[str], temperature: float, max_tokens: int, stop: Sequence[str], seed: int
    ) -> list[str]:
        """The texts of checked prompts (stop strings are cut afterwards)."""
        raise NotImplementedError


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cuts ``text`` before the earliest occurrence of any stop string.

    Args:
        text: a completion.
        stop: stop strings (empty strings are ignored).

    Returns:
        The text up to (not including) the first stop string, or the whole text.
    """
    found = [text.find(s) for s in stop if s and s in text]
    return text[: min(found, default=len(text))]


def check_generate_args(prompts: Sequence[str], temperature: float, max_tokens: int) -> list[str]:
    """Validates the common ``generate`` arguments and returns the prompts as a list.

    Raises:
        TypeError: ``prompts`` is a single string or holds non-strings.
        ValueError: a negative temperature or a non-positive ``max_tokens``.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string; wrap it: [prompt]")
    prompts = list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"every prompt must be a str, got {type(p).__name__}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return prompts


class FunctionBackend(Backend):
    """Adapts a Python function ``fn(prompt, seed) -> text`` to the backend protocol.

    Useful for scripted answers in tests and for wrapping another client library.
    ``stop`` strings are applied to what the function returns.

    Args:
        fn: called once per prompt with the prompt and a per-prompt seed
            (``seed + index``).
        name: identifier for logs and cache keys.
    """

    def __init__(self, fn: Callable[[str, int], str], name: str = "function"):
        self.fn = fn
        self.name = name
        self.calls = 0

    def _complete(self, prompts: list[str], temperature: float, max_tokens: int, stop: Sequence[str], seed: int):
        self.calls += 1
        return [str(self.fn(p, seed + i)) for i, p in enumerate(prompts)]
