"""apply_flax / apply_nnx against plain Flax on densely built members (es.materialize)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import freeze

import eggroll

pytestmark = pytest.mark.usefixtures("exact_matmuls")


def population(variables, n=4, **kw):
    es = eggroll.eggroll(population_size=n, solution=variables, sigma_init=0.3, **kw)
    state = es.init(jax.random.key(0), variables, es.default_params)
    return es, *es.ask(jax.random.key(1), state, es.default_params)


def assert_matches_flax(model, variables, x, **kw):
    """apply_flax on low-rank members equals model.apply on the same members built densely."""
    es, pop, _ = population(variables)
    low = eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x, **kw), pop)
    dense = jax.vmap(lambda v: model.apply(v, x, **kw))(es.materialize(pop))
    np.testing.assert_allclose(low, dense, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(dense - model.apply(variables, x, **kw)[None]).max()) > 1e-2  # members really differ


@pytest.mark.parametrize("shape", [(3, 4, 4), (3, 2, 4)])  # square: silently wrong before; non-square: a crash
def test_dense_general_with_descending_axes_matches_flax(shape):
    model, x = nn.DenseGeneral(5, axis=(-1, -2)), jax.random.normal(jax.random.key(0), shape)
    assert_matches_flax(model, model.init(jax.random.key(1), x), x)


class MaskedDense(nn.Dense):
    """A MADE-style Dense whose own __call__ masks the kernel."""

    @nn.compact
    def __call__(self, inputs):
        k = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features))
        return inputs @ (k * jnp.triu(jnp.ones_like(k)))


class RenamedDense(nn.Dense):
    """A subclass that keeps Dense's __call__: still perturbed."""


def test_a_dense_subclass_with_its_own_call_is_refused_and_one_without_is_perturbed():
    x = jax.random.normal(jax.random.key(0), (3, 4))
    model = MaskedDense(4, use_bias=False)
    variables = model.init(jax.random.key(1), x)
    _, pop, _ = population(variables)
    with pytest.raises(ValueError, match=r"not consumed: \['params/kernel'\]"):
        eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x), pop)
    es, pop, _ = population(variables, lowrank=lambda path, leaf: False)  # the way out the message gives
    low = eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x), pop)
    np.testing.assert_allclose(low, jax.vmap(lambda v: model.apply(v, x))(es.materialize(pop)), rtol=1e-5, atol=1e-5)
    model = RenamedDense(4)
    assert_matches_flax(model, model.init(jax.random.key(1), x), x)


class AutoEncoder(nn.Module):
    def setup(self):
        self.enc, self.dec = nn.Dense(2), nn.Dense(4)

    def __call__(self, x):
        return self.dec(self.enc(x))

    def encode(self, x):
        return self.enc(x)


@pytest.mark.parametrize("method", [AutoEncoder.encode, "encode"])
def test_a_method_that_uses_part_of_the_model_matches_flax(method):
    model, x = AutoEncoder(), jax.random.normal(jax.random.key(0), (3, 4))
    assert_matches_flax(model, model.init(jax.random.key(1), x), x, method=method)


def test_frozendict_variables_work_for_the_mean_and_the_members():
    model, x = nn.Dense(3), jax.random.normal(jax.random.key(0), (3, 4))
    variables = freeze(model.init(jax.random.key(1), x))
    np.testing.assert_array_equal(eggroll.apply_flax(model, variables, x), model.apply(variables, x))
    assert_matches_flax(model, variables, x)


def test_trainable_params_only_keeps_batch_stats_and_members_finite():
    """With solution=variables, BatchNorm's running variance was perturbed too (negative: NaN members)."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.BatchNorm(use_running_average=True)(nn.Dense(4)(x)))

    model, x = Net(), jnp.ones((2, 3))
    variables = model.init(jax.random.key(0), x)
    variables["batch_stats"]["BatchNorm_0"]["var"] = jnp.full(4, 1e-3)  # a trained model's running variance
    es, pop, state = population(variables, n=8, trainable=lambda path, leaf: path[0].key == "params")
    fitness = eggroll.evaluate(lambda m: jnp.sum(eggroll.apply_flax(model, m, x)), pop)
    assert bool(jnp.all(jnp.isfinite(fitness)))
    state, _ = es.tell(jax.random.key(2), pop, fitness, state, es.default_params)
    mean = es.get_mean(state)
    jax.tree.map(np.testing.assert_array_equal, mean["batch_stats"], variables["batch_stats"])
    assert float(jnp.abs(mean["params"]["Dense_0"]["kernel"] - variables["params"]["Dense_0"]["kernel"]).max()) > 0


def test_dense_general_batch_dims_error_names_the_layer_and_the_way_out():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.DenseGeneral(5, batch_dims=(0,), name="proj")(x)

    model, x = Net(), jnp.ones((3, 2, 4))
    _, pop, _ = population(model.init(jax.random.key(0), x))
    with pytest.raises(NotImplementedError, match=r"^proj/kernel: .*batch_dims.*lowrank="):
        eggroll.evaluate(lambda m: eggroll.apply_flax(model, m, x), pop)


@pytest.mark.parametrize("call", ["linear", "embed", "attend"])
def test_nnx_out_sharding_on_a_lowrank_layer_is_refused_not_dropped(call):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin, self.emb = nnx.Linear(4, 4, rngs=rngs), nnx.Embed(6, 4, rngs=rngs)

        def __call__(self, ids):
            spec = jax.sharding.PartitionSpec()
            h = self.emb(ids, out_sharding=spec if call == "embed" else None)
            h = self.lin(h, out_sharding=spec if call == "linear" else None)
            return self.emb.attend(h, out_sharding=spec if call == "attend" else None)

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    _, pop, _ = population(state)
    with pytest.raises(ValueError, match="cannot honour out_sharding="):
        eggroll.evaluate(lambda m: eggroll.apply_nnx(graphdef, m, jnp.array([1, 2])), pop)
