"""RL fitness on real gymnax environments: reference rollouts, masking, normalisation, CRN, training.

The fitness is checked against a hand-written Python loop over gymnax's own public
``env.step`` (6 return values in gymnax 1.x), so masking after termination, the
observation normalisation and the running statistics are all checked against an
independent computation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eggroll
from eggroll.problems.rl import make_env, normalize, rl_fitness
from eggroll.rl_train import RLConfig, train

# ---------------------------------------------------------------------------- normalisation


def test_masked_welford_equals_numpy_over_everything_seen():
    rng = np.random.default_rng(0)
    stats = normalize.init_stats(3)
    seen = []
    for i in range(4):
        x = rng.normal(loc=[1.0, -5.0, 100.0], scale=[1.0, 0.1, 10.0], size=(6, 7, 3)).astype(np.float32)
        mask = rng.random((6, 7)) < 0.6
        if i == 2:
            mask[:] = False  # an empty batch changes nothing
        seen.append(x[mask])
        shift = normalize.shift_for(stats, jnp.asarray(x[0, 0]))
        stats = normalize.update(stats, *normalize.batch_moments(jnp.asarray(x), jnp.asarray(mask), shift), shift)
    allx = np.concatenate(seen)
    assert float(stats.count) == len(allx)
    np.testing.assert_allclose(stats.mean, allx.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize.variance(stats), allx.var(0), rtol=1e-4)
    z = normalize.normalize(stats, jnp.asarray(allx[:5]))
    np.testing.assert_allclose(z, (allx[:5] - allx.mean(0)) / np.sqrt(allx.var(0) + 1e-8), rtol=1e-3, atol=1e-4)
    # before two observations the transform is the identity; clipping applies
    fresh = normalize.init_stats(3)
    np.testing.assert_array_equal(normalize.normalize(fresh, jnp.array([1.0, -20.0, 3.0])), [1.0, -10.0, 3.0])


# ---------------------------------------------------------------------------- env adapter


def test_gymnax_adapter_step_agrees_with_gymnax_public_step():
    env = make_env("CartPole-v1")
    gym_env, params = env.raw
    obs, state = env.reset(jax.random.key(0))
    ref_obs, ref_state = gym_env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, ref_obs)
    step = jax.jit(env.step)
    for t in range(60):  # constant action: the pole falls, `done` fires
        key = jax.random.key(t)
        out = gym_env.step(key, ref_state, 1, params)
        assert len(out) == 6  # gymnax 1.x: obs, state, reward, terminated, truncated, info
        obs, state, reward, done = step(key, state, jnp.int32(1))
        assert bool(done) == bool(out[3] | out[4])
        assert float(reward) == float(out[2])
        if done:
            np.testing.assert_allclose(obs, out[5]["final_observation"], rtol=1e-6)
            break
        np.testing.assert_allclose(obs, out[0], rtol=1e-6)
        ref_state = out[1]
    else:
        pytest.fail("CartPole never terminated with a constant action")


def test_unknown_names_and_bad_settings_say_what_to_do():
    with pytest.raises(ValueError, match="unknown environment 'CartPole-v9'.*CartPole-v1.*hopper"):
        make_env("CartPole-v9")
    with pytest.raises(ValueError, match="unknown parameters"):
        make_env("CartPole-v1", env_params={"gravityy": 1.0})
    with pytest.raises(ValueError, match="num_rollouts must be >= 1"):
        rl_fitness("CartPole-v1", num_rollouts=0)
    with pytest.raises(ValueError, match=r"population_size \(--population\) must be even"):
        RLConfig(population_size=7).validate()
    with pytest.raises(ValueError, match="unknown strategy"):
        RLConfig(strategy="cma").validate()
    # found by an audit: a Brax --backend on a gymnax env crashed in gymnax's constructor; a horizon past the
    # env's time limit was cut to it without a word; a negative weight decay and a NaN target were taken
    with pytest.raises(ValueError, match="--backend applies to Brax environments; CartPole-v1 is a gymnax one"):
        RLConfig(env="CartPole-v1", backend="spring").validate()
    with pytest.raises(ValueError, match=r"horizon 300 is longer than Pendulum-v1's episodes \(200 steps"):
        rl_fitness("Pendulum-v1", horizon=300)
    longer = rl_fitness("Pendulum-v1", horizon=300, env_kwargs={"env_params": {"max_steps_in_episode": 300}})
    assert longer.horizon == longer.env.max_steps == 300  # the way out the message gives
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        RLConfig(weight_decay=-1.0).validate()
    with pytest.raises(ValueError, match="target_return must be a finite number"):
        RLConfig(target_return=float("nan")).validate()


# ---------------------------------------------------------------------------- reference rollouts


def _reference_returns(fit, population, key, stats, num_rollouts, crn, horizon):
    """Play every member's episodes with a plain Python loop over gymnax's own env.step."""
    gym_env, params = fit.env.raw
    apply = jax.jit(fit.policy.apply)
    mean = np.asarray(stats.mean)
    var = np.asarray(normalize.variance(stats))
    n = jax.tree.leaves(population)[0].shape[0]
    returns, observations = np.zeros((n, num_rollouts)), []
    for i in range(n):
        member = jax.tree.map(lambda x, i=i: x[i], population)
        base = key if crn else jax.random.fold_in(key, i)
        for r, k in enumerate(jax.random.split(base, num_rollouts)):
            obs, state = gym_env.reset(jax.random.fold_in(k, 0), params)
            run = jax.random.fold_in(k, 1)
            for t in range(horizon):
                observations.append(np.asarray(obs))
                x = np.clip((np.asarray(obs) - mean) / np.sqrt(var + 1e-8), -10, 10)
                action = apply(member, jnp.asarray(x, jnp.float32))
                k_env = jax.random.split(jax.random.fold_in(run, t))[1]
                obs, state, reward, terminated, truncated, _ = gym_env.step(k_env, state, action, params)
                returns[i, r] += float(reward)
                if terminated or truncated:
                    break
    return returns, np.stack(observations)


@pytest.mark.parametrize("crn, early_exit", [(True, False), (False, True)])
def test_fitness_equals_reference_loop_and_stats_equal_welford_over_seen_observations(crn, early_exit):
    """Fixed-horizon scan and early-exit loop both reproduce the reference, with and without CRN."""
    horizon, rollouts = 100, 2
    fit = rl_fitness(
        "CartPole-v1",
        hidden=(8,),
        num_rollouts=rollouts,
        horizon=horizon,
        common_random_numbers=crn,
        early_exit=early_exit,
    )
    params = fit.init_params(jax.random.key(0))
    es = eggroll.open_es(4, params, sigma_init=0.5)
    population, _ = es.ask(jax.random.key(1), es.init(jax.random.key(2), params, es.default_params), es.default_params)
    evaluate = jax.jit(fit.evaluate_rollouts)
    state0 = fit.init(jax.random.key(3))
    k1, k2 = jax.random.key(10), jax.random.key(11)

    roll1, state1 = evaluate(k1, population, state0)
    ref1, obs1 = _reference_returns(fit, population, k1, state0.obs_stats, rollouts, crn, horizon)
    np.testing.assert_allclose(roll1.returns, ref1)
    np.testing.assert_array_equal(roll1.lengths, ref1)  # CartPole: reward 1 per step until the end
    assert ref1.min() < horizon, "some episode must end early for the masking to be exercised"
    assert float(state1.obs_stats.count) == len(obs1) == float(state1.env_steps)
    np.testing.assert_allclose(state1.obs_stats.mean, obs1.mean(0), rtol=1e-4, atol=1e-5)

    # second generation: normalisation with the statistics of the first is applied, stats merge
    roll2, state2 = evaluate(k2, population, state1)
    ref2, obs2 = _reference_returns(fit, population, k2, state1.obs_stats, rollouts, crn, horizon)
    np.testing.assert_allclose(roll2.returns, ref2)
    both = np.concatenate([obs1, obs2])
    assert float(state2.obs_stats.count) == len(both)
    np.testing.assert_allclose(state2.obs_stats.mean, both.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(normalize.variance(state2.obs_stats), both.var(0), rtol=1e-3, atol=1e-6)
    fitness, _ = jax.jit(fit.evaluate)(k2, population, state1)
    np.testing.assert_allclose(fitness, ref2.mean(1))


def test_eggroll_population_matches_its_materialised_population():
    fit = rl_fitness("Pendulum-v1", hidden=(16, 16), num_rollouts=2, horizon=40)
    params = fit.init_params(jax.random.key(0))
    es = eggroll.eggroll(16, params, sigma_init=0.2)
    population, _ = es.ask(jax.random.key(1), es.init(jax.random.key(2), params, es.default_params), es.default_params)
    state = fit.init(jax.random.key(3))
    low, s_low = jax.jit(fit.evaluate)(jax.random.key(4), population, state)
    dense, s_dense = jax.jit(fit.evaluate)(jax.random.key(4), es.materialize(population), state)
    np.testing.assert_allclose(low, dense, rtol=1e-4)
    np.testing.assert_allclose(s_low.obs_stats.mean, s_dense.obs_stats.mean, rtol=1e-4)
    assert float(jnp.std(low)) > 1.0  # members differ


def test_common_random_numbers_and_stochastic_policies():
    def same_params_population(fit, n):
        p = fit.init_params(jax.random.key(0))
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), p)

    shared = rl_fitness("Pendulum-v1", hidden=(8,), horizon=30, common_random_numbers=True)
    own = rl_fitness("Pendulum-v1", hidden=(8,), horizon=30, common_random_numbers=False)
    pop = same_params_population(shared, 6)
    f_shared, _ = jax.jit(shared.evaluate)(jax.random.key(1), pop, shared.init(0))
    f_own, _ = jax.jit(own.evaluate)(jax.random.key(1), pop, own.init(0))
    assert np.unique(np.asarray(f_shared)).size == 1  # identical members, identical episodes
    assert np.unique(np.asarray(f_own)).size == 6  # each member its own start states

    sto = rl_fitness("CartPole-v1", hidden=(8,), horizon=200, num_rollouts=2, stochastic=True)
    pop = same_params_population(sto, 4)
    ev = jax.jit(sto.evaluate)
    f1, _ = ev(jax.random.key(1), pop, sto.init(0))
    f2, _ = ev(jax.random.key(2), pop, sto.init(0))
    assert np.unique(np.asarray(f1)).size == 1  # common random numbers include the action noise
    assert float(f1[0]) != float(f2[0])  # sampled actions: another key, another return


# ---------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["eggroll", "open_es"])
def test_cartpole_population_mean_reaches_475(strategy):
    config = RLConfig(env="CartPole-v1", strategy=strategy, generations=25, eval_every=5, seed=0)
    result = train(config, progress=False)
    means = result.history["mean_return"]
    assert max(means) >= 475.0, f"{strategy}: population mean returns {means}"
    assert result.best_eval_return >= 475.0


@pytest.mark.slow
def test_pendulum_improves_clearly():
    result = train(
        RLConfig(env="Pendulum-v1", generations=20, eval_every=10, num_rollouts=2, sigma=0.1, learning_rate=0.1),
        progress=False,
    )
    initial = result.history["eval_return"][0]
    assert result.best_eval_return > initial + 300.0, result.history["eval_return"]
    assert np.mean(result.history["mean_return"][-5:]) > np.mean(result.history["mean_return"][:3]) + 300.0


def test_sharded_generation_over_8_devices_matches_single_device():
    """The fitness composes with the core's sharded generation (population split over a mesh)."""
    from eggroll import parallel

    fit = rl_fitness("CartPole-v1", hidden=(8,), num_rollouts=2, horizon=50)
    params = fit.init_params(jax.random.key(0))
    es = eggroll.eggroll(16, params, sigma_init=0.3, maximize=True)
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8
    results = []
    for m in (None, mesh):
        step = parallel.generation_step(es, fit.evaluate, mesh=m, population_level=True)
        state, fstate = es.init(jax.random.key(1), params, es.default_params), fit.init(jax.random.key(2))
        state, fstate, metrics = step(jax.random.key(3), state, es.default_params, fstate)
        results.append((jax.tree.leaves(es.get_mean(state)), fstate, float(metrics["mean_fitness"])))
    (mean0, fs0, f0), (mean1, fs1, f1) = results
    assert f0 == f1
    assert float(fs0.obs_stats.count) == float(fs1.obs_stats.count) > 0
    np.testing.assert_allclose(fs0.obs_stats.mean, fs1.obs_stats.mean, rtol=1e-5, atol=1e-6)
    for a, b in zip(mean0, mean1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
