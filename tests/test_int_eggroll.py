"""Integer EGGROLL: noise from counters, the integer perturbation, and the update against its definition."""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll.models import egg
from eggroll.strategies import int_eggroll as ie

RANK = 2
_member = jax.jit(ie.member, static_argnums=2)


def _tree():
    rng = np.random.default_rng(0)
    w = rng.integers(-20, 21, (5, 7))
    w[0, :3] = [127, -127, 126]  # saturation at the edges
    return {"w": jnp.asarray(w, jnp.int8), "v": jnp.asarray(rng.integers(-5, 6, 6), jnp.int8)}


def _setup(n=16, **kw):
    tree = _tree()
    es = ie.int_eggroll(n, tree, rank=RANK, table_size=2**12, **kw)
    state = es.init(jax.random.key(1), tree, es.default_params)
    pop, state = es.ask(jax.random.key(2), state, es.default_params)
    return es, tree, state, pop


def test_members_are_antithetic_and_noise_is_regenerated_from_counters():
    es, tree, state, pop = _setup()
    m0, m1, m2 = (_member(pop, jnp.int32(i), RANK) for i in (0, 1, 2))
    assert m0["w"].a.dtype == jnp.int8 and m0["w"].b.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(m0["w"].a), -np.asarray(m1["w"].a))  # mirrors
    np.testing.assert_array_equal(np.asarray(m0["w"].b), np.asarray(m1["w"].b))
    assert not np.array_equal(np.asarray(m0["w"].b), np.asarray(m2["w"].b))  # another pair, other noise
    assert int(m0["w"].shift) == 4 + int(es.default_params.sigma_shift)
    # the key given to ask selects the noise: another key, other members; the same key, the same members;
    # no key (None), the state's own seed and the counters only
    pop2, _ = es.ask(jax.random.key(99), state, es.default_params)
    assert not np.array_equal(np.asarray(_member(pop2, jnp.int32(2), RANK)["w"].a), np.asarray(m2["w"].a))
    pop2, _ = es.ask(None, state, es.default_params)
    np.testing.assert_array_equal(np.asarray(_member(pop2, jnp.int32(2), RANK)["w"].a), np.asarray(m2["w"].a))
    # the next generation draws new noise; noise_reuse=2 keeps it for two generations
    later = state._replace(generation=jnp.int32(1))
    pop3, _ = es.ask(None, later, es.default_params)
    assert not np.array_equal(np.asarray(_member(pop3, jnp.int32(0), RANK)["w"].a), np.asarray(m0["w"].a))
    es2, _, state2, pop_r = _setup(noise_reuse=2)
    pop_r1, _ = es2.ask(None, state2._replace(generation=jnp.int32(1)), es2.default_params)
    np.testing.assert_array_equal(
        np.asarray(_member(pop_r, jnp.int32(4), RANK)["v"]), np.asarray(_member(pop_r1, jnp.int32(4), RANK)["v"])
    )


def test_noise_table_is_int8_gaussian_with_std_16():
    _, _, state, _ = _setup()
    t = np.asarray(state.table).astype(np.float64)
    assert state.table.dtype == jnp.int8 and np.abs(t).max() <= 127
    assert 15.0 < t.std() < 17.0 and abs(t.mean()) < 1.0


def test_member_matmul_adds_rounded_rank_terms_in_the_int32_accumulator():
    es, tree, state, pop = _setup()
    view = _member(pop, jnp.int32(3), RANK)
    x = jnp.asarray(np.random.default_rng(4).integers(-127, 128, (4, 7)), jnp.int8)
    got = np.asarray(egg.matmul(x, view["w"]))
    xs, w = np.asarray(x).astype(np.int64), np.asarray(view["w"].base).astype(np.int64)
    a, b = np.asarray(view["w"].a).astype(np.int64), np.asarray(view["w"].b).astype(np.int64)
    k = int(view["w"].shift)
    want = np.zeros((4, 5), np.int64)
    for t in range(4):
        for i in range(5):
            acc = int(xs[t] @ w[i])
            for j in range(RANK):
                acc += math.floor(int(xs[t] @ b[:, j]) * int(a[i, j]) / 2**k + 0.5)
            d = 16 * math.isqrt(7)
            want[t, i] = max(-127, min(127, math.floor((acc + d // 2) / d)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 9])
def test_int8_dot_is_exact_for_every_contraction_length(k):
    """XLA's GPU backend (jax 0.11.2, H100) doubled int8 products whose contraction was not a multiple of 4;
    ``intops.int8_dot`` pads it. On CPU this checks the padded path is exact; on a GPU it catches the bug."""
    from eggroll import intops

    rng = np.random.default_rng(k)
    x = rng.integers(-127, 128, (3, k)).astype(np.int8)
    w = rng.integers(-127, 128, (5, k)).astype(np.int8)
    got = intops.int8_dot(jnp.asarray(x), jnp.asarray(w), (1,), (1,))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), x.astype(np.int64) @ w.astype(np.int64).T)
    f = rng.integers(-127, 128, (k, 4, 3)).astype(np.int8)  # two contracted axes, as in int_eggroll's tell
    g = rng.integers(-127, 128, (k, 6, 3)).astype(np.int8)
    z = jax.jit(lambda p, q: intops.int8_dot(p, q, (0, 2), (0, 2)))(f, g)
    np.testing.assert_array_equal(np.asarray(z), np.einsum("pmr,pnr->mn", f.astype(np.int64), g.astype(np.int64)))


def test_update_equals_its_definition_explicit_loop():
    es, tree, state, pop = _setup(n=16, z_thresholds=[8])  # z threshold 0.5
    rng = np.random.default_rng(5)
    fitness = jnp.asarray(rng.normal(size=16).round(1), jnp.float32)
    fitness = fitness.at[6].set(fitness[7])  # a tie: that pair's score is 0
    new_state, metrics = jax.jit(es.tell)(None, pop, fitness, state, es.default_params)
    assert new_state.mean["w"].dtype == jnp.int8 and new_state.mean["v"].dtype == jnp.int8
    assert int(new_state.generation) == 1

    f = np.asarray(fitness)
    pairs = 8
    scores = [int(np.sign(f[2 * k + 1] - f[2 * k])) for k in range(pairs)]  # minimising
    assert scores[3] == 0
    # matrix leaf: Z[i, j] = sum_k F_k sum_r A_k[i, r] B_k[j, r], noise read back from the member views
    views = [_member(pop, jnp.int32(2 * k), RANK) for k in range(pairs)]
    w0 = np.asarray(tree["w"]).astype(np.int64)
    z = np.zeros_like(w0)
    for k in range(pairs):
        a = np.asarray(views[k]["w"].a).astype(np.int64)
        b = np.asarray(views[k]["w"].b).astype(np.int64)
        for i in range(w0.shape[0]):
            for j in range(w0.shape[1]):
                z[i, j] += scores[k] * sum(a[i, r] * b[j, r] for r in range(RANK))
    thr = (8 * round(256 * math.sqrt(pairs * RANK))) >> 4
    want = np.clip(w0 + np.where(np.abs(z) > thr, np.sign(z), 0), -127, 127)
    np.testing.assert_array_equal(np.asarray(new_state.mean["w"]), want)
    assert np.any(want != w0) and np.any((np.abs(z) > 0) & (np.abs(z) <= thr))  # both branches exercised
    assert int(want[0, 0]) <= 127 and int(want[0, 1]) >= -127

    # vector leaf: e_k = s * t from the table; recover it from the member's exact perturbation definition
    v0 = np.asarray(tree["v"]).astype(np.int64)
    zv = np.zeros_like(v0)
    for k in range(pairs):
        e = np.asarray(ie._leaf_noise(state.table, state.seed, 0, (6,), RANK, jnp.int32(0), jnp.int32(k)))
        shift = 4 + int(es.default_params.sigma_shift)
        np.testing.assert_array_equal(
            np.asarray(views[k]["v"]), np.clip(v0 + np.floor(e / 2**shift + 0.5).astype(np.int64), -127, 127)
        )
        zv += scores[k] * e
    thr_v = (8 * round(256 * math.sqrt(pairs))) >> 4
    want_v = np.clip(v0 + np.where(np.abs(zv) > thr_v, np.sign(zv), 0), -127, 127)
    np.testing.assert_array_equal(np.asarray(new_state.mean["v"]), want_v)
    assert int(metrics["num_moved"]) == int(np.sum(want != w0) + np.sum(want_v != v0))


def test_maximize_flips_the_pair_sign():
    es_min, tree, state, pop = _setup()
    es_max = ie.int_eggroll(16, tree, rank=RANK, table_size=2**12, maximize=True)
    fitness = jnp.arange(16, dtype=jnp.float32)
    lo, _ = jax.jit(es_min.tell)(None, pop, fitness, state, es_min.default_params)
    hi, _ = jax.jit(es_max.tell)(None, pop, fitness, state, es_max.default_params)
    d_lo = np.asarray(lo.mean["w"]).astype(int) - np.asarray(tree["w"])
    d_hi = np.asarray(hi.mean["w"]).astype(int) - np.asarray(tree["w"])
    inner = np.abs(np.asarray(tree["w"]).astype(int)) < 127
    np.testing.assert_array_equal(d_lo[inner], -d_hi[inner])


def test_training_in_lax_scan_improves_a_toy_integer_objective():
    # maximise the sum of an int8 vector plus the output of a matrix on a fixed input
    tree = {"v": jnp.zeros((32,), jnp.int8), "w": jnp.zeros((8, 16), jnp.int8)}
    es = ie.int_eggroll(64, tree, rank=1, sigma_shift=0, z_thresholds=[16], maximize=True, table_size=2**14)
    x = jnp.full((1, 16), 16, jnp.int8)

    def fit(view):
        return jnp.sum(view["v"].astype(jnp.int32)) + jnp.sum(egg.matmul(x, view["w"]).astype(jnp.int32))

    def gen(state, _):
        pop, state = es.ask(None, state, es.default_params)
        fitness = jax.vmap(lambda i: fit(ie.member(pop, i)))(pop.index).astype(jnp.float32)
        state, metrics = es.tell(None, pop, fitness, state, es.default_params)
        return state, metrics["mean_fitness"]

    state = es.init(jax.random.key(0), tree, es.default_params)
    state, curve = jax.jit(lambda s: jax.lax.scan(gen, s, None, length=30))(state)
    assert state.mean["v"].dtype == jnp.int8 and state.generation.dtype == jnp.int32
    assert float(curve[-1]) > float(curve[0]) + 100
    assert int(jnp.sum(state.mean["v"].astype(jnp.int32))) > 200


def test_threshold_schedule_and_bad_input():
    sched = np.asarray(ie.z_threshold_schedule(5, 1.0, 0.05))
    assert sched[0] == 0 and sched[-1] == round(16 * statistics.NormalDist().inv_cdf(0.975)) == 31
    assert np.all(np.diff(sched) >= 0)
    tree = _tree()
    with pytest.raises(ValueError, match="even"):
        ie.int_eggroll(7, tree)
    with pytest.raises(ValueError, match="int8"):
        ie.int_eggroll(8, {"w": jnp.zeros((3, 3), jnp.float32)})
    with pytest.raises(ValueError, match="overflow"):
        ie.int_eggroll(8, {"w": jnp.zeros((3, 2048), jnp.int8)})
    with pytest.raises(ValueError, match="alpha_end"):
        ie.z_threshold_schedule(3, 1.0, 0.0)
    with pytest.raises(ValueError, match="table_size"):
        ie.int_eggroll(8, tree, table_size=16)


def test_nonfinite_fitness_ranks_worst_and_best_fitness_is_the_best_so_far():
    """A NaN used to make ``state.best_fitness`` NaN for good, and ``metrics["best_fitness"]`` was the generation's
    best only (eggroll's, open_es's and evosax's is the best so far)."""
    es, tree, state, pop = _setup(n=8)
    tell = jax.jit(es.tell)
    params = es.default_params
    nan_first = jnp.array([jnp.nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    s1, m1 = tell(None, pop, nan_first, state, params)
    worst = jnp.array([9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # the NaN member ranked as the worst value
    s1_ref, _ = tell(None, pop, worst, state, params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s1.mean, s1_ref.mean))
    assert float(m1["best_fitness"]) == 1.0 and int(m1["num_nonfinite"]) == 1 and int(m1["best_index"]) == 1
    assert float(m1["mean_fitness"]) == 4.0  # of the finite values
    s2, m2 = tell(None, pop, jnp.full(8, 50.0), s1, params)
    assert float(m2["best_fitness"]) == 1.0 and float(m2["best_fitness_in_generation"]) == 50.0
    assert float(s2.best_fitness) == 1.0
    s3, m3 = tell(None, pop, jnp.full(8, jnp.inf), s2, params)  # nothing finite: no move, the best stays
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s3.mean, s2.mean))
    assert float(m3["best_fitness"]) == 1.0 and math.isnan(float(m3["mean_fitness"]))


def test_tell_and_init_refuse_wrong_shapes_and_a_fractional_sigma_shift():
    es, tree, state, pop = _setup(n=8)
    for bad in (jnp.zeros(6), jnp.zeros((8, 1))):
        with pytest.raises(ValueError, match=r"fitness must have shape \(8,\), one number per member"):
            es.tell(None, pop, bad, state, es.default_params)
    with pytest.raises(ValueError, match="must have the structure and shapes of the solution"):
        es.init(jax.random.key(0), {"w": tree["w"][:4], "v": tree["v"]}, es.default_params)
    with pytest.raises(ValueError, match="must have the structure and shapes of the solution"):
        es.init(jax.random.key(0), {**tree, "u": tree["v"]}, es.default_params)
    with pytest.raises(ValueError, match="sigma_shift must be an int >= 0, got 1.5"):
        ie.int_eggroll(8, tree, sigma_shift=1.5)
