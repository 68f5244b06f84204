"""The model's own tokenizer (byte-level BPE via ``tokenizers``) and its chat template.

Built from GGUF metadata (``tokenizer.ggml.*``: tokens, merges, token types,
special ids, pre-tokenizer name, chat template) or from a Hugging Face
``tokenizer.json`` (+ ``tokenizer_config.json``).

Chat formatting implements ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``),
the format of SmolLM2, Qwen and many others; when the model's template inserts
a default system message (SmolLM2's does), that message is read from the
template and inserted the same way.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

_CONTROL = 3  # llama.cpp token type of special / control tokens
_SPLIT_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclasses.dataclass
class Tokenizer:
    """A text tokenizer with the special ids and chat template of its model.

    Attributes:
        backend: the ``tokenizers.Tokenizer`` doing the work.
        bos_id: beginning-of-sequence id (or None).
        eos_id: end-of-sequence id (for ChatML models, ``<|im_end|>``).
        pad_id: id used to pad batches.
        add_bos: whether encoded prompts start with ``bos_id``.
        chat_template: the model's (Jinja) chat template text, if any.
        stop_ids: ids that end a generation (eos and ``<|endoftext|>``-like ids).
    """

    backend: object
    bos_id: int | None
    eos_id: int | None
    pad_id: int
    add_bos: bool = False
    chat_template: str | None = None
    stop_ids: tuple[int, ...] = ()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` (special tokens written in the text are recognised)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        add = self.add_bos if add_bos is None else add_bos
        if add and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (special tokens dropped unless ``skip_special=False``). Ids past the tokenizer's
        vocabulary decode to nothing: a model whose embedding is padded (more rows than tokens) may sample them.

        Raises:
            ValueError: a negative id.
        """
        ids = [int(i) for i in ids]
        if ids and min(ids) < 0:
            raise ValueError(f"token id {min(ids)} is negative: ids run from 0 to {self.vocab_size - 1}")
        return self.backend.decode(ids, skip_special_tokens=skip_special)

    def token(self, i: int) -> str:
        """The vocabulary string of id ``i``."""
        return self.backend.id_to_token(int(i))

    @property
    def default_system(self) -> str | None:
        """The system message the chat template inserts when none is given (SmolLM2 has one)."""
        if not self.chat_template:
            return None
        m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", self.chat_template, re.S)
        return m.group(1) if m else None

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Format ``[{"role": ..., "content": ...}, ...]`` as ChatML text.

        A default system message from the model's template is prepended when the
        conversation does not start with a system turn; with
        ``add_generation_prompt`` the text ends with the opening of an assistant turn.
        """
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"chat messages must be dicts with 'role' and 'content', got {m!r}")
        parts = []
        if messages and messages[0]["role"] != "system" and self.default_system is not None:
            parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        for m in messages:
            parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode_prompt(self, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
        """Ids of a prompt: as a user turn of the chat template (``chat=True``) or raw text."""
        if not chat:
            return self.encode(prompt)
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.encode(self.apply_chat_template(messages), add_bos=self.add_bos)


def _pre_tokenizer(name: str):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in ("gpt2", "default", "gpt-2"):
        return byte_level
    if name in ("llama-bpe", "llama3", "qwen2", "smaug-bpe", "dbrx"):
        split = pre_tokenizers.Split(Regex(_SPLIT_LLAMA3), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(
        f"GGUF pre-tokenizer {name!r} is not supported (known: smollm, gpt2, llama-bpe, qwen2); "
        "load the model from a Hugging Face directory with tokenizer.json instead"
    )
