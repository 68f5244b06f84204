"""EGG: a byte-level recurrent language model in integer arithmetic only.

Weights and activations are ``int8``, every product is accumulated in ``int32``,
and there is no floating-point operation anywhere in the forward pass. The
design follows the integer model of the EGGROLL paper (nano-egg); the code here
is written from its description.

Fixed point: an activation or weight value ``v`` stands for ``v / 16`` (four
fractional bits), so ``16`` is "one" and ``int8`` covers ``[-7.9, 7.9]``.
Nonlinearity comes from saturation: every ``int8`` result is clipped to
``[-127, 127]`` (``-128`` never occurs, so negation is always safe).

Layers (``D = width``, ``H = mlp_ratio * D``)::

    x = embed[token]                                   int8 (D,)
    for each of the ``depth`` blocks:
        u = layer_norm(x, norm1)
        f = sat(u W_gate^T + b_gate)                   gate, sigmoid = identity
        c = sat(u W_cand^T + b_cand)                   candidate, tanh = identity
        h_t = h_{t-1} + ((f + 127) * (c - h_{t-1})) >> 8      minGRU recurrence
        x = sat(x + h)
        x = sat(x + relu(layer_norm(x, norm2) W_up^T) W_down^T)
    logits = sat(layer_norm(x, norm_out) W_head^T + b_head)   int8 (256,)

* ``matmul``: ``int8(round(x W^T / (16 * isqrt(n))))`` with an ``int32``
  accumulator, ``n`` the fan-in; when ``16 * isqrt(n)`` is a power of two
  (``n`` = 4, 16, 64, 256, 1024, ...) the division is an arithmetic shift
  ``(acc + d/2) >> log2(d)``. Rounding is to nearest (half up), so the error is
  symmetric and antithetic members stay mirrors.
* ``layer_norm``: ``x * w / max(mean|x|, 1)``, through a 16-bit fixed-point
  reciprocal of the per-token mean absolute value (one integer division per
  token, then a multiply and a rounding shift); ``w`` starts at 16, so the
  output has mean absolute value 16 ("one").
* The cell is minGRU (Feng et al. 2024): gate and candidate depend on the input
  only, so both projections run over the whole chunk as one matrix product and
  only the element-wise recurrence is a ``lax.scan`` over time. ``(f + 127)`` lies
  in ``[0, 254]``, so ``h_t`` stays between ``h_{t-1}`` and ``c`` and can never
  leave ``int8`` (no clipping needed there).
* The head has an ``int8`` bias (not in nano-egg): it lets the model learn the
  byte frequencies directly. Logits are log2-probabilities in units of 1/16 bit:
  ``p(b) ∝ 2 ** (logit_b / 16)``.

Perturbed members (integer EGGROLL) see a matrix as :class:`IntLowRank`; the
perturbation is added inside the ``int32`` accumulator before the rescale:
``acc += sum_j round((x . b_j) * a_j / 2**shift)``, one rounded term per rank
(for rank 1 this is exactly ``(x B) A^T >> shift``; per-rank rounding keeps each
term inside ``int32``).

:func:`emulate` is the same model evaluated in floating point (float64 for the
exactness test, float32 as the "float model" of the throughput benchmark); it
also accepts float :class:`eggroll.lowrank.LowRank` members.

References:
    Sarkar et al., "Evolution Strategies at the Hyperscale" (EGGROLL), 2025.
    Feng et al., "Were RNNs All We Needed?" (minGRU), 2024.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from eggroll.intops import (  # the integer low-rank ops, shared with integer EGGROLL
    ONE,
    QMAX,
    IntLowRank,
    _lead,
    embed,
    matmul,
    sat_add,
    saturate,
    scale_divisor,
)
from eggroll.lowrank import LowRank

VOCAB = 256
RECIP_BITS = 16  # layer norm: fixed-point reciprocal of the mean absolute value
RECIP_ONE = 1 << RECIP_BITS
Params = dict[str, Any]


class EggConfig(NamedTuple):
    """Shape of an EGG model.

    Attributes:
        width: model width ``D`` (the hidden state per block has ``D`` entries).
        depth: number of blocks ``L``.
        mlp_ratio: MLP hidden width is ``mlp_ratio * D``.
    """

    width: int = 64
    depth: int = 2
    mlp_ratio: int = 4

    def validate(self) -> EggConfig:
        """Raise a ``ValueError`` naming the bad field; return ``self`` otherwise."""
        for name in ("width", "depth", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EggConfig.{name} must be a positive integer, got {value!r}.")
        return self


def layer_norm(x: jax.Array, w: jax.Array) -> jax.Array:
    """Integer layer norm ``x * w / mean|x|``, saturated to ``int8``.

    ``m = max(floor(sum|x| / D), 1)`` per token; one integer division per token
    gives the 16-bit reciprocal ``inv = round(2**16 / m)``, and every element is
    ``(x * w * inv + 2**15) >> 16`` (a multiply and a shift instead of an integer
    division per element, which is ~30x faster on a CPU). ``|x w inv| < 2**30``.
    """
    d = x.shape[-1]
    total = jnp.sum(jnp.abs(x.astype(jnp.int32)), axis=-1, keepdims=True)
    mean_abs = jnp.maximum(_floor_div_const(total, d), 1)
    inv = jnp.floor_divide(RECIP_ONE + (mean_abs >> 1), mean_abs)
    num = x.astype(jnp.int32) * _lead(w.astype(jnp.int32), x.ndim)
    return saturate((num * inv + (RECIP_ONE >> 1)) >> RECIP_BITS)


def _floor_div_const(v: jax.Array, d: int) -> jax.Array:
    if d & (d - 1) == 0:
        return v >> (d.bit_length() - 1)
    return jnp.floor_divide(v, d)


def relu(x: jax.Array) -> jax.Array:
    """``max(x, 0)`` in ``int8``."""
    return jnp.maximum(x, jnp.int8(0))


def min_gru(u: jax.Array, h0: jax.Array, block: Params) -> tuple[jax.Array, jax.Array]:
    """The integer minGRU over a chunk: ``u`` (T, D) int8, ``h0`` (D,) int8 -> (h (T, D), h_T)."""
    f = sat_add(matmul(u, block["gate"]), block["gate_bias"])
    c = sat_add(matmul(u, block["cand"]), block["cand_bias"])

    def step(h, fc):
        f_t, c_t = fc
        h32 = h.astype(jnp.int32)
        h_new = (h32 + (((f_t.astype(jnp.int32) + QMAX) * (c_t.astype(jnp.int32) - h32)) >> 8)).astype(jnp.int8)
        return h_new, h_new

    h_last, hs = jax.lax.scan(step, h0, (f, c))
    return hs, h_last


def apply(params: Params, tokens: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Run the integer model over one chunk, carrying the recurrent state.

    Args:
        params: the ``int8`` parameter tree from :func:`init` (or a member view
            from :func:`eggroll.strategies.int_eggroll.member`).
        tokens: byte ids, shape ``(T,)`` (any integer dtype).
        state: ``int8`` hidden state ``(depth, width)`` (zeros at the start of a text).

    Returns:
        ``(logits, new_state)``: ``int8`` logits ``(T, 256)`` in 1/16-bit units and the
        ``int8`` state after the last token. ``vmap`` it for batches or members.
    """
    x = embed(tokens.astype(jnp.int32), params["embed"])
    new_state = []
    for i, block in enumerate(params["blocks"]):
        hs, h_last = min_gru(layer_norm(x, block["norm1"]), state[i], block)
        x = sat_add(x, hs)
        y = matmul(relu(matmul(layer_norm(x, block["norm2"]), block["up"])), block["down"])
        x = sat_add(x, y)
        new_state.append(h_last)
    logits = sat_add(matmul(layer_norm(x, params["norm_out"]), params["head"]), params["head_bias"])
    return logits, jnp.stack(new_state)


def init_state(config: EggConfig) -> jax.Array:
    """The zero hidden state ``(depth, width)`` ``int8``."""
    return jnp.zeros((config.depth, config.width), jnp.int8)


def init(key: jax.Array, config: EggConfig = EggConfig()) -> Params:
    """Random ``int8`` parameters: matrices ``round(16 N(0,1))`` clipped to ``±127``.

    Layer-norm weights start at 16 ("one"), biases at 0. This runs once, outside
    training, so it may use floats.

    Args:
        key: a JAX PRNG key.
        config: model shape.

    Returns:
        ``{"embed", "blocks": [ {norm1, gate, gate_bias, cand, cand_bias, norm2, up, down} ],
        "norm_out", "head", "head_bias"}``, every leaf ``int8``.
    """
    config.validate()
    d, h = config.width, config.width * config.mlp_ratio
    keys = iter(jax.random.split(key, 2 + 4 * config.depth))

    def mat(shape):
        return jnp.clip(jnp.round(ONE * jax.random.normal(next(keys), shape)), -QMAX, QMAX).astype(jnp.int8)

    def ones(n):
        return jnp.full((n,), ONE, jnp.int8)

    def zeros(n):
        return jnp.zeros((n,), jnp.int8)

    blocks = [
        {
            "norm1": ones(d),
            "gate": mat((d, d)),
            "gate_bias": zeros(d),
            "cand": mat((d, d)),
            "cand_bias": zeros(d),
            "norm2": ones(d),
            "up": mat((h, d)),
            "down": mat((d, h)),
        }
        for _ in range(config.depth)
    ]
    return {
        "embed": mat((VOCAB, d)),
        "blocks": blocks,
        "norm_out": ones(d),
        "head": mat((VOCAB, d)),
        "head_bias": zeros(VOCAB),
    }


def config_of(params: Params) -> EggConfig:
    """Recover the :class:`EggConfig` from a parameter tree."""
    d = params["embed"].shape[-1]
    blocks = params["blocks"]
    ratio = blocks[0]["up"].shape[0] // d if blocks else 4
    return EggConfig(width=int(d), depth=len(blocks), mlp_ratio=int(ratio))


def num_params(params: Params) -> int:
    """Number of scalar parameters."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


# --------------------------------------------------------------------------- float emulation


def _f_floordiv(v: jax.Array, d) -> jax.Array:
    """``floor(v / d)`` for integer-valued floats, exact even if the division is not correctly rounded.

    (XLA on CPU may divide through a reciprocal, so ``1176 / 49`` can come out as
    ``23.999...``; one correction step against the exact products fixes that.)
    """
    q = jnp.floor(v / d)
    r = v - q * d
    return q + (r >= d).astype(v.dtype) - (r < 0).astype(v.dtype)


def _f_round_div(v: jax.Array, d) -> jax.Array:
    return _f_floordiv(v + jnp.floor(d / 2), d)


def _f_sat(v: jax.Array) -> jax.Array:
    return jnp.clip(v, -QMAX, QMAX)


def _f_rank_terms(u, f, shift, dtype):
    prod = u[..., None, :] * _lead(f.astype(dtype), u.ndim + 1)
    return jnp.sum(_f_round_div(prod, (2.0**shift).astype(dtype)), axis=-1)


def _f_matmul(x, w, dtype):
    if isinstance(w, IntLowRank):
        acc = x @ w.base.astype(dtype).T
        acc = acc + _f_rank_terms(x @ w.b.astype(dtype), w.a, w.shift, dtype)
    elif isinstance(w, LowRank):  # float EGGROLL member: W + a b^T in the (m, n) layout
        acc = x @ w.base.astype(dtype).T + (x @ w.b.astype(dtype)) @ w.a.astype(dtype).T
    else:
        acc = x @ w.astype(dtype).T
    base = w.base if isinstance(w, IntLowRank | LowRank) else w
    return _f_sat(_f_round_div(acc, scale_divisor(base.shape[-1])))


def _f_embed(ids, w, dtype):
    if isinstance(w, IntLowRank):
        rows = jnp.take(w.base, ids, axis=0).astype(dtype)
        return _f_sat(rows + _f_rank_terms(jnp.take(w.a, ids, axis=0).astype(dtype), w.b, w.shift, dtype))
    if isinstance(w, LowRank):
        rows = jnp.take(w.base, ids, axis=0).astype(dtype)
        return _f_sat(rows + jnp.take(w.a, ids, axis=0).astype(dtype) @ w.b.astype(dtype).T)
    return jnp.take(w, ids, axis=0).astype(dtype)


def _f_layer_norm(x, w, dtype):
    d = x.shape[-1]
    mean_abs = jnp.maximum(_f_floordiv(jnp.sum(jnp.abs(x), axis=-1, keepdims=True), float(d)), 1)
    inv = _f_round_div(jnp.asarray(RECIP_ONE, dtype), mean_abs)
    num = x * _lead(w.astype(dtype), x.ndim)
    return _f_sat(_f_round_div(num * inv, float(RECIP_ONE)))


def _f_add(*xs):
    total = xs[0]
    for x in xs[1:]:
        total = total + _lead(x, total.ndim)
    return _f_sat(total)


def emulate(
    params: Params, tokens: jax.Array, state: jax.Array, dtype: Any = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """:func:`apply` evaluated in floating point, with the integer semantics spelled out.

    Every integer operation is written as its real-number definition (``floor``,
    ``clip``), so with ``dtype=float64`` (run under ``jax.enable_x64(True)``) the
    result equals :func:`apply` exactly: all intermediate values are integers far
    below ``2**53``. In ``float32`` it is close but not bit-exact (the layer-norm
    products reach ``2**30``); that is the float model of the throughput
    benchmark, where matrix leaves may be float
    :class:`eggroll.lowrank.LowRank` members (``W + a b^T``, ``(m, n)`` layout).

    Args:
        params: the parameter tree (``int8`` or float values).
        tokens: ``(T,)`` byte ids.
        state: ``(depth, width)`` hidden state.
        dtype: the float type to compute in.

    Returns:
        ``(logits, new_state)`` as floats holding integer values.
    """
    vec = lambda v: v.astype(dtype)
    x = _f_embed(tokens.astype(jnp.int32), params["embed"], dtype)
    state = state.astype(dtype)
    new_state = []
    for i, block in enumerate(params["blocks"]):
        u = _f_layer_norm(x, vec(block["norm1"]), dtype)
        f = _f_add(_f_matmul(u, block["gate"], dtype), vec(block["gate_bias"]))
        c = _f_add(_f_matmul(u, block["cand"], dtype), vec(block["cand_bias"]))

        def step(h, fc):
            f_t, c_t = fc
            h_new = h + _f_floordiv((f_t + QMAX) * (c_t - h), 256.0)
            return h_new, h_new

        h_last, hs = jax.lax.scan(step, state[i], (f, c))
        x = _f_add(x, hs)
        y = _f_matmul(_f_layer_norm(x, vec(block["norm2"]), dtype), block["up"], dtype)
        y = _f_matmul(jnp.maximum(y, 0), block["down"], dtype)
        x = _f_add(x, y)
        new_state.append(h_last)
    z = _f_matmul(_f_layer_norm(x, vec(params["norm_out"]), dtype), params["head"], dtype)
    return _f_add(z, vec(params["head_bias"])), jnp.stack(new_state)


# --------------------------------------------------------------------------- sampling


def generate(
    params: Params,
    prompt: bytes,
    length: int,
    key: jax.Array,
    temperature: float = 1.0,
) -> bytes:
    """Sample ``length`` bytes after ``prompt`` from the integer model.

    The prompt is read in one chunk (its state carried), then one byte at a
    time is drawn from ``p(b) ∝ 2 ** (logit_b / (16 * temperature))``
    (``temperature=0`` is greedy). Sampling converts logits to floats; the
    model itself stays integer.

    Args:
        params: ``int8`` parameters.
        prompt: the bytes to condition on (may be empty).
        length: number of bytes to generate (``>= 0``).
        key: PRNG key.
        temperature: softness of sampling, ``>= 0``.

    Returns:
        The generated bytes (without the prompt).
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    state = init_state(config_of(params))
    prompt_ids = jnp.asarray(list(prompt) or [ord("\n")], jnp.int32)
    logits, state = _apply_jit(params, prompt_ids, state)
    if length == 0:
        return b""
    toks = _sample_loop(params, logits[-1], state, jax.random.split(key, length), jnp.float32(temperature))
    return bytes(int(t) for t in toks)


_apply_jit = jax.jit(apply)


@jax.jit
def _sample_loop(params: Params, last: jax.Array, state: jax.Array, keys: jax.Array, temperature: jax.Array):
    def draw(k, z):
        scaled = z.astype(jnp.float32) * (math.log(2.0) / ONE) / jnp.maximum(temperature, 1e-6)
        sampled = jax.random.categorical(k, scaled)
        return jnp.where(temperature > 0, sampled, jnp.argmax(z)).astype(jnp.int32)

    def step(carry, k):
        z, s = carry
        tok = draw(k, z)
        out, s = apply(params, tok[None], s)
        return (out[0], s), tok

    return jax.lax.scan(step, (last, state), keys)[1]
