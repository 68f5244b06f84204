"""Hugging Face layout: read and write a local ``config.json`` + ``*.safetensors`` directory.

:func:`load_hf` reads a ``LlamaForCausalLM`` directory (single file or sharded
with ``model.safetensors.index.json``) and its ``tokenizer.json``;
:func:`save_hf` writes params back in the same layout, so a model fine-tuned
with eggroll loads in transformers (``AutoModelForCausalLM.from_pretrained(dir)``),
llama.cpp's converter, or back in eggroll.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from eggroll.models.llama import LlamaConfig, init_params, unstack_layers
from eggroll.models.tokenizer import Tokenizer

_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}


def _read_json(file: str) -> dict:
    """The JSON object in ``file``, or a ValueError naming the file."""
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{file!r} is not valid JSON ({e}); restore the file from the model's source") from e
    if not isinstance(data, dict):
        raise ValueError(f"{file!r} must hold a JSON object, not a {type(data).__name__}")
    return data


def read_config(path: str):
    """A :class:`~eggroll.models.llama.LlamaConfig` from a directory's ``config.json``."""

    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} has no config.json: not a Hugging Face model directory")
    cfg = _read_json(cfg_path)
    mtype = cfg.get("model_type")
    if mtype not in ("llama", "mistral"):
        raise ValueError(f"model_type {mtype!r} in {cfg_path!r} is not supported; eggroll reads Llama-family models")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError("models with attention / MLP biases are not supported")
    try:
        rope_theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        return LlamaConfig(
            vocab_size=int(cfg["vocab_size"]),
            dim=int(cfg["hidden_size"]),
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=int(cfg["num_attention_heads"]),
            n_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            hidden_dim=int(cfg["intermediate_size"]),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(rope_theta),
            max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise ValueError(f"{cfg_path!r} has no {e.args[0]!r} entry, which a Llama config needs") from None
    except (AttributeError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{cfg_path!r} does not describe a valid Llama model ({e})") from e


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        files = list(weight_map.values()) if isinstance(weight_map, dict) else []
        if not files or not all(isinstance(v, str) for v in files):
            raise ValueError(f"{index!r} has no 'weight_map' object of weight name -> file name")
        files = sorted(set(files))
    else:
        files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{path!r} has no *.safetensors weights")
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(os.path.join(path, name)))
        except Exception as e:
            raise ValueError(f"cannot read {name!r} in {path!r} ({e}); the file is corrupt or truncated") from e
    return tensors


def load_hf(path: str, dtype=None):
    """Load ``(config, params, tokenizer)`` from a local Hugging Face Llama directory.

    Raises:
        FileNotFoundError: config.json, weights or tokenizer.json missing.
        ValueError: unsupported model type, a damaged JSON or tokenizer file, corrupt or incomplete
            weights, or weights whose shapes or layer count differ from config.json.
    """
    import jax
    import jax.numpy as jnp

    dtype = jnp.float32 if dtype is None else dtype
    config = read_config(path)
    tensors = _read_tensors(path)
    cfg_path = os.path.join(path, "config.json")
    layer_ids = {int(m.group(1)) for n in tensors if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if layer_ids and max(layer_ids) >= config.n_layers:
        raise ValueError(
            f"{path!r} holds weights of layer {max(layer_ids)} but {cfg_path!r} says num_hidden_layers="
            f"{config.n_layers}: config.json does not match the weights"
        )
    # the shapes config.json implies, in this module's layout (HF matrices are the transposes)
    want = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))

    def get(name, shape):
        if name not in tensors:
            raise ValueError(f"weight {name!r} missing in {path!r}")
        w = tensors[name]
        if tuple(w.shape) != tuple(shape):
            raise ValueError(
                f"weight {name!r} in {path!r} has shape {tuple(w.shape)}, but {cfg_path!r} implies "
                f"{tuple(shape)}: config.json does not match the weights"
            )
        return np.asarray(w, np.float32)

    layers = []
    for i in range(config.n_layers):
        layer = {}
        for ename, hname in _LAYER_NAMES.items():
            w = get(f"model.layers.{i}.{hname}", want["layers"][ename].shape[:0:-1])
            layer[ename] = w.T if w.ndim == 2 else w
        layers.append(layer)
    params = {
        "embed": jnp.asarray(get("model.embed_tokens.weight", want["embed"].shape), dtype),
        "layers": {k: jnp.asarray(np.stack([layer[k] for layer in layers]), dtype) for k in _LAYER_NAMES},
        "norm": jnp.asarray(get("model.norm.weight", want["norm"].shape), dtype),
    }
    if not config.tie_embeddings:
        params["lm_head"] = jnp.asarray(get("lm_head.weight", want["lm_head"].shape[::-1]).T, dtype)
    return config, params, tokenizer_from_dir(path)


def save_hf(path: str, config, params, tokenizer=None) -> None:
    """Write params as a Hugging Face ``LlamaForCausalLM`` directory (safetensors, float32).

    Args:
        path: output directory (created).
        config: model shape.
        params: params pytree with plain arrays (materialise a member first).
        tokenizer: if given, its ``tokenizer.json`` and ``tokenizer_config.json`` are written too.
    """
    from safetensors.numpy import save_file

    from eggroll import lowrank

    params = lowrank.materialize_tree(params)
    os.makedirs(path, exist_ok=True)
    out = {"model.embed_tokens.weight": np.asarray(params["embed"], np.float32)}
    for i, layer in enumerate(unstack_layers(params["layers"])):
        for ename, hname in _LAYER_NAMES.items():
            w = np.asarray(layer[ename], np.float32)
            out[f"model.layers.{i}.{hname}"] = np.ascontiguousarray(w.T if w.ndim == 2 else w)
    out["model.norm.weight"] = np.asarray(params["norm"], np.float32)
    if not config.tie_embeddings:
        out["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"], np.float32).T)
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "intermediate_size": config.hidden_dim,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    if tokenizer is not None:
        cfg.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
        tokenizer.backend.save(os.path.join(path, "tokenizer.json"))
        tcfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": tokenizer.add_bos,
            "chat_template": tokenizer.chat_template,
        }
        for name, i in (
            ("bos_token", tokenizer.bos_id),
            ("eos_token", tokenizer.eos_id),
            ("pad_token", tokenizer.pad_id),
        ):
            if i is not None:
                tcfg[name] = tokenizer.token(i)
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(tcfg, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def tokenizer_from_dir(path: str) -> Tokenizer:
    """Load ``tokenizer.json`` (+ ``tokenizer_config.json``) from a Hugging Face model directory."""
    from tokenizers import Tokenizer as HFTokenizer

    tj = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tj):
        raise FileNotFoundError(f"{path!r} has no tokenizer.json; eggroll needs a 'fast' tokenizer file")
    try:
        backend = HFTokenizer.from_file(tj)
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise ValueError(f"{tj!r} is not a readable tokenizer file ({e}); restore it from the model's source") from e
    cj = os.path.join(path, "tokenizer_config.json")
    cfg = _read_json(cj) if os.path.isfile(cj) else {}

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
