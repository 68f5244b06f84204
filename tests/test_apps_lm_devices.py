"""Integer EGGROLL on the text task over a device mesh (8 fake CPU devices from conftest).

The members (and their recurrent hidden states) are split over the devices, the
fitness vector is all-gathered and the integer update is computed on every
device, so any number of devices must give exactly the one-device run.
"""

import jax
import numpy as np
import pytest

from eggroll import parallel
from eggroll.problems import text

# the settings of tests/test_apps_lm.py's TINY run, so the one-device functions compiled there are reused
CFG = text.LMConfig(width=16, depth=1, population=32, chunk=16, generations=8)


@pytest.fixture(scope="module")
def split():
    return text.split_bytes(text.load_corpus(), 0.1)


def _run(split, devices, generations=3):
    task = text.make_task(CFG, *split, mesh=parallel.mesh_from_option(devices))
    carry, fitness = task.init(), []
    for g in range(generations):
        x, y, reset = task.batch(g)
        carry, metrics = task.step(carry, task.put(x), task.put(y), task.put(reset))
        fitness.append(float(metrics["mean_fitness"]))
    return task, carry, fitness


def test_one_two_and_four_devices_give_identical_runs(split):
    runs = {d: _run(split, d) for d in (1, 2, 4)}
    _, ref, ref_fitness = runs[1]
    assert int(ref.generation) == 3 and ref.hidden.shape == (32, 1, 16)
    assert np.asarray(ref.hidden).any()  # the hidden states really evolve (and are compared below)
    assert not np.array_equal(
        np.asarray(ref.es_state.mean["head"]), np.asarray(_run(split, 1, 0)[1].es_state.mean["head"])
    )
    for d in (2, 4):
        task, carry, fitness = runs[d]
        assert task.mesh.devices.size == d
        assert carry.hidden.sharding.spec == jax.sharding.PartitionSpec(parallel.DEFAULT_AXIS)  # members split
        assert carry.es_state.mean["head"].sharding.is_fully_replicated
        # parameters, strategy state and every member's hidden state: bit for bit
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, ref), jax.tree.map(np.asarray, carry))
        assert fitness == pytest.approx(ref_fitness, rel=1e-6)  # the mean: float summation order may differ


def test_only_the_fitness_vector_crosses_devices(split):
    task = text.make_task(CFG, *split, mesh=parallel.mesh_from_option(4))
    x, y, _ = task.batch(0)
    hlo = task.step.lower(task.init(), task.put(x), task.put(y), task.put(False)).compile().as_text()
    found = parallel.collectives(hlo)
    n_params = sum(w.size for w in jax.tree.leaves(task.init().es_state.mean))
    assert found, "expected the all-gather of the fitness values"
    assert max(c.elements for c in found) <= CFG.population < n_params
    assert {c.op for c in found} == {"all-gather"}
    assert sum(c.bytes for c in found) == 4 * CFG.population  # N float32, once


def test_population_that_does_not_split_is_refused(split):
    with pytest.raises(
        ValueError, match=r"population_size=36 cannot be split over 4 devices.*multiple of 2 x 4 devices = 8"
    ):
        text.make_task(
            text.LMConfig(width=16, depth=1, population=36, chunk=16), *split, mesh=parallel.mesh_from_option(4)
        )
    with pytest.raises(ValueError, match="antithetic pairs stay on one device"):
        parallel.check_population_size(6, 4, antithetic=True)
    parallel.check_population_size(16, 8, antithetic=True)  # 8 devices x one pair each
    with pytest.warns(DeprecationWarning, match="moved to eggroll.parallel"):
        from eggroll.strategies.int_eggroll import check_devices  # the old name still works, with a warning
    with pytest.raises(ValueError, match="antithetic pairs stay on one device"):
        check_devices(6, 4)
