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
import json
import os
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
        """Text of ``ids`` (special tokens dropped unless ``skip_special=False``)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

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


def tokenizer_from_gguf(reader) -> Tokenizer:
    """Build the tokenizer stored in an open GGUF file's metadata (``gpt2`` byte-level BPE models)."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    from eggroll.models.gguf import field

    kind = field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2'); "
            "load the model from a Hugging Face directory with tokenizer.json instead"
        )
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", [])]
    types = list(field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(field(reader, "tokenizer.ggml.pre", "gpt2"))
    backend.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(types) if t == _CONTROL]
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    eos = field(reader, "tokenizer.ggml.eos_token_id")
    bos = field(reader, "tokenizer.ggml.bos_token_id")
    pad = field(reader, "tokenizer.ggml.padding_token_id", eos if eos is not None else 0)
    stops = {int(eos)} if eos is not None else set()
    for name in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>"):
        if name in vocab:
            stops.add(vocab[name])
    return Tokenizer(
        backend=backend,
        bos_id=None if bos is None else int(bos),
        eos_id=None if eos is None else int(eos),
        pad_id=int(pad),
        add_bos=bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=field(reader, "tokenizer.chat_template"),
        stop_ids=tuple(sorted(stops)),
    )


def tokenizer_from_dir(path: str) -> Tokenizer:
    """Load ``tokenizer.json`` (+ ``tokenizer_config.json``) from a Hugging Face model directory."""
    from tokenizers import Tokenizer as HFTokenizer

    tj = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tj):
        raise FileNotFoundError(f"{path!r} has no tokenizer.json; eggroll needs a 'fast' tokenizer file")
    backend = HFTokenizer.from_file(tj)
    cfg = {}
    cj = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(cj):
        with open(cj) as f:
            cfg = json.load(f)

    def tok_id(name):
        v = cfg.get(name)
        if isinstance(v, dict):
            v = v.get("content")
        return backend.token_to_id(v) if isinstance(v, str) else None

    eos, bos, pad = tok_id("eos_token"), tok_id("bos_token"), tok_id("pad_token")
    stops = {eos} if eos is not None else set()
    for name in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>"):
        i = backend.token_to_id(name)
        if i is not None:
            stops.add(i)
    template = cfg.get("chat_template")
    if template is None and os.path.isfile(os.path.join(path, "chat_template.jinja")):
        with open(os.path.join(path, "chat_template.jinja")) as f:
            template = f.read()
    return Tokenizer(
        backend=backend,
        bos_id=bos,
        eos_id=eos,
        pad_id=pad if pad is not None else (eos if eos is not None else 0),
        add_bos=bool(cfg.get("add_bos_token", False)),
        chat_template=template,
        stop_ids=tuple(sorted(stops)),
    )
