"""The integer EGG model: integer semantics, saturation, and exact equality with its float emulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll import intops
from eggroll.models import egg

_apply = jax.jit(egg.apply)
TEXT = b"The integer model, byte by byte: 0123456789!" * 2
_emulate = jax.jit(egg.emulate, static_argnums=3)


def _round_half_up_div(v: np.ndarray, d: np.ndarray | int) -> np.ndarray:
    return np.floor_divide(v + np.floor_divide(d, 2), d)


@pytest.mark.parametrize("d", [1, 2, 16, 176, 256, 352])
def test_rescale_division_is_round_half_up(d):
    v = np.concatenate([np.arange(-3 * d, 3 * d + 1), np.random.default_rng(0).integers(-(2**24), 2**24, 500)])
    got = np.asarray(intops._div_round(jnp.asarray(v, jnp.int32), d))
    np.testing.assert_array_equal(got, _round_half_up_div(v, d))


def test_sat_add_saturates_symmetrically_and_stays_int8():
    a = jnp.asarray([127, -127, 100, -100, 5], jnp.int8)
    b = jnp.asarray([127, -127, 100, -100, -7], jnp.int8)
    out = egg.sat_add(a, b)
    assert out.dtype == jnp.int8
    assert out.tolist() == [127, -127, 127, -127, -2]
    assert egg.sat_add(a, b, b).tolist() == [127, -127, 127, -127, -9]


def test_matmul_uses_int32_accumulator_and_saturates():
    n = 1024  # worst case fan-in: 1024 * 127 * 127 = 16.5M, far beyond int16, inside int32
    x = jnp.full((2, n), 127, jnp.int8).at[1].set(-127)
    w = jnp.full((3, n), 127, jnp.int8)
    out = egg.matmul(x, w)
    assert out.dtype == jnp.int8
    assert out.tolist() == [[127] * 3, [-127] * 3]
    # a value inside the range is the rounded rescale, 16 * isqrt(n) = 512
    x = jnp.zeros((1, n), jnp.int8).at[0, :10].set(16)
    w = jnp.full((1, n), 16, jnp.int8)
    assert int(egg.matmul(x, w)[0, 0]) == round(10 * 256 / 512)  # 5


def test_layer_norm_scales_to_mean_abs_16_and_handles_zeros():
    x = jnp.asarray([[4, -4, 8, -8], [0, 0, 0, 0]], jnp.int8)
    w = jnp.full((4,), 16, jnp.int8)
    out = jax.jit(egg.layer_norm)(x, w)
    assert out.dtype == jnp.int8
    # mean |x| = 6, inv = round(65536 / 6) = 10923: 4*16/6 = 10.67 -> 11, 8*16/6 = 21.3 -> 21
    assert out.tolist() == [[11, -11, 21, -21], [0, 0, 0, 0]]
    # against the exact rational value: the 16-bit reciprocal is off by at most one step
    x = jax.random.randint(jax.random.key(0), (200, 64), -127, 128).astype(jnp.int8)
    w = jax.random.randint(jax.random.key(1), (64,), -127, 128).astype(jnp.int8)
    got = np.asarray(jax.jit(egg.layer_norm)(x, w)).astype(np.float64)
    xs = np.asarray(x).astype(np.float64)
    exact = xs * np.asarray(w) / np.maximum(np.floor(np.abs(xs).sum(-1, keepdims=True) / 64), 1)
    assert np.max(np.abs(got - np.clip(exact, -127, 127))) <= 1.0


def test_min_gru_recurrence_never_leaves_int8_without_clipping():
    rng = np.random.default_rng(1)
    d, t = 64, 200
    block = {
        "gate": jnp.asarray(rng.integers(-127, 128, (d, d)), jnp.int8),
        "cand": jnp.asarray(rng.integers(-127, 128, (d, d)), jnp.int8),
        "gate_bias": jnp.asarray(rng.integers(-127, 128, d), jnp.int8),
        "cand_bias": jnp.asarray(rng.integers(-127, 128, d), jnp.int8),
    }
    u = jnp.asarray(rng.integers(-127, 128, (t, d)), jnp.int8)
    h0 = jnp.asarray(rng.integers(-127, 128, d), jnp.int8)
    hs, h_last = egg.min_gru(u, h0, block)
    assert hs.dtype == jnp.int8 and h_last.dtype == jnp.int8
    # reference: exact integer recurrence in Python ints, and the convexity bound
    f = np.asarray(egg.sat_add(egg.matmul(u, block["gate"]), block["gate_bias"])).astype(np.int64)
    c = np.asarray(egg.sat_add(egg.matmul(u, block["cand"]), block["cand_bias"])).astype(np.int64)
    h = np.asarray(h0).astype(np.int64)
    for step in range(t):
        new = h + (((f[step] + 127) * (c[step] - h)) >> 8)
        assert np.all(new >= np.minimum(h, c[step])) and np.all(new <= np.maximum(h, c[step]))
        h = new
        np.testing.assert_array_equal(np.asarray(hs[step]), h)
    assert int(jnp.min(hs)) >= -127


def test_integer_forward_equals_float64_emulation_exactly():
    width, depth = 24, 2  # 24 is not a power of two: the rescale is a true division
    cfg = egg.EggConfig(width, depth, 2)
    params = egg.init(jax.random.key(width), cfg)
    # push some leaves to the saturation limits so clipping paths are exercised
    params["head_bias"] = params["head_bias"].at[:8].set(127).at[8:16].set(-127)
    params["blocks"][0]["norm1"] = jnp.full((width,), 90, jnp.int8)
    tokens = jnp.asarray(np.frombuffer(TEXT, np.uint8))
    state = jnp.asarray(np.random.default_rng(2).integers(-127, 128, (depth, width)), jnp.int8)
    logits, new_state = _apply(params, tokens, state)
    assert logits.dtype == jnp.int8 and new_state.dtype == jnp.int8
    assert logits.shape == (tokens.shape[0], 256) and new_state.shape == (depth, width)
    assert int(jnp.max(jnp.abs(logits.astype(jnp.int32)))) == 127  # saturation really happened
    with jax.enable_x64(True):
        ref_logits, ref_state = _emulate(params, tokens, state, jnp.float64)
        assert ref_logits.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(ref_logits))
    np.testing.assert_array_equal(np.asarray(new_state), np.asarray(ref_state))


def test_perturbed_member_forward_equals_float64_emulation_exactly():
    from eggroll.strategies import int_eggroll as ie

    cfg = egg.EggConfig(16, 1, 4)
    params = egg.init(jax.random.key(3), cfg)
    es = ie.int_eggroll(8, params, rank=2, sigma_shift=1, table_size=2**16)
    state = es.init(jax.random.key(4), params, es.default_params)
    pop, _ = es.ask(jax.random.key(5), state, es.default_params)
    tokens = jnp.asarray(np.frombuffer(b"perturbed members, exactly", np.uint8))
    zero = egg.init_state(cfg)
    ids = jnp.asarray([0, 1, 5], jnp.int32)

    def int_member(i):
        view = ie.member(pop, i, 2)
        assert isinstance(view["head"], egg.IntLowRank)  # checked while tracing
        return egg.apply(view, tokens, zero)

    logits, st = jax.jit(jax.vmap(int_member))(ids)
    with jax.enable_x64(True):
        ref, ref_st = jax.jit(jax.vmap(lambda i: egg.emulate(ie.member(pop, i, 2), tokens, zero, jnp.float64)))(ids)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(st), np.asarray(ref_st))
    assert not np.array_equal(np.asarray(logits[0]), np.asarray(logits[1]))  # mirrors differ
    base_logits, _ = _apply(params, tokens, zero)
    assert not np.array_equal(np.asarray(base_logits), np.asarray(logits[0]))  # the perturbation is visible


def test_state_carried_across_chunks_equals_one_long_chunk():
    cfg = egg.EggConfig(24, 2, 2)  # same shapes as the exactness test: the whole-text call is compiled once
    params = egg.init(jax.random.key(6), cfg)
    tokens = jnp.asarray(np.frombuffer(TEXT, np.uint8))
    whole, s_whole = _apply(params, tokens, egg.init_state(cfg))
    half = tokens.shape[0] // 2
    first, s = _apply(params, tokens[:half], egg.init_state(cfg))
    second, s = _apply(params, tokens[half:], s)
    np.testing.assert_array_equal(np.asarray(whole), np.concatenate([first, second]))
    assert not np.array_equal(np.asarray(s), np.zeros_like(np.asarray(s)))
    np.testing.assert_array_equal(np.asarray(s_whole), np.asarray(s))


def test_init_is_int8_round_16_normal():
    params = jax.jit(egg.init, static_argnums=1)(jax.random.key(7), egg.EggConfig(64, 1))
    assert all(leaf.dtype == jnp.int8 for leaf in jax.tree.leaves(params))
    w = np.asarray(params["blocks"][0]["up"]).astype(np.float64)
    assert w.shape == (256, 64)
    assert 15.0 < w.std() < 17.0 and abs(w.mean()) < 0.5
    assert int(params["norm_out"][0]) == 16 and int(params["head_bias"].sum()) == 0
    assert egg.config_of(params) == egg.EggConfig(64, 1, 4)
    with pytest.raises(ValueError, match="width"):
        egg.init(jax.random.key(0), egg.EggConfig(0, 1))


def test_generate_returns_bytes_and_greedy_is_deterministic():
    params = egg.init(jax.random.key(8), egg.EggConfig(32, 1))
    a = egg.generate(params, b"def ", 12, jax.random.key(0), temperature=0.0)
    b = egg.generate(params, b"def ", 12, jax.random.key(1), temperature=0.0)
    assert isinstance(a, bytes) and len(a) == 12 and a == b
    c = egg.generate(params, b"def ", 12, jax.random.key(0), temperature=1.0)
    assert len(c) == 12 and c != a  # sampling differs from greedy (probability ~1 for a random model)
    with pytest.raises(ValueError, match="temperature"):
        egg.generate(params, b"x", 3, jax.random.key(0), temperature=-1.0)
