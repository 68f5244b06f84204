"""Checkpoints: resume bit for bit after a real SIGTERM, survive a crash mid-save, refuse bad checkpoints.

Real orbax and real subprocesses; the problem is tiny (a 6 x 4 EGGROLL layer)
so the slow part is JAX start-up and compilation. The fitness function is
stateful (running statistics of the fitness, like observation normalisation)
and random (fitness noise drawn from the generation key), so resuming must
restore the strategy state, the fitness state and the run key exactly.

This file is also the worker script: ``python tests/test_checkpoint.py train DIR TOTAL SLEEP``
or ``python tests/test_checkpoint.py crash DIR``.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TOTAL = 12
EVERY = 3


@functools.cache
def problem():
    """Built once per process, so the in-process runs share one compiled generation."""
    import jax
    import jax.numpy as jnp
    import optax

    import eggroll

    solution = {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}
    x = jnp.linspace(-1.0, 1.0, 12).reshape(2, 6)

    def member_loss(m):
        return jnp.mean((eggroll.lowrank.matmul(x, m["w"]) + m["b"][None] - 0.5) ** 2)

    def evaluator(key, population, stats):
        f = eggroll.evaluate(member_loss, population)
        f = f + 0.01 * jax.random.normal(key, f.shape)  # noisy fitness: depends on the generation key
        count = stats["count"] + f.shape[0]
        mean = stats["mean"] + jnp.sum(f - stats["mean"]) / count
        return f, {"count": count, "mean": mean}

    es = eggroll.eggroll(population_size=8, solution=solution, optimizer=optax.adam(0.05))
    stats = {"count": jnp.zeros((), jnp.float32), "mean": jnp.zeros((), jnp.float32)}
    return es, evaluator, solution, stats


def train(directory, total=TOTAL, resume=False, sleep=0.0, **kw):
    import jax

    from eggroll import run

    es, evaluator, solution, stats = problem()

    def slow(gen, row):
        print(f"gen {gen}", flush=True)
        time.sleep(sleep)

    return es, run.train(
        es,
        evaluator,
        solution,
        key=jax.random.key(3),
        num_generations=total,
        fn_state=stats,
        population_level=True,
        checkpoint_dir=directory,
        checkpoint_every=EVERY,
        resume=resume,
        progress=False,
        callback=slow if sleep else None,
        **kw,
    )


def host(tree):
    from eggroll import parallel

    return parallel.to_host(tree)


def assert_trees_equal(a, b):
    import jax

    la, ta = jax.tree.flatten(host(a))
    lb, tb = jax.tree.flatten(host(b))
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)


def _env():
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_sigterm_then_resume_is_bit_for_bit(tmp_path):
    from eggroll.logging import read_jsonl

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, __file__, "train", str(run_dir), str(TOTAL), "0.25"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("gen 5"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    assert "interrupted at generation" in output, output[-3000:]
    stopped = int(output.split("interrupted at generation")[1].split()[0])
    assert 5 <= stopped < TOTAL, output[-2000:]
    assert stopped in _steps(run_dir)  # saved on SIGTERM, off the every-3 schedule or on it

    es, resumed = train(run_dir, resume=True)
    assert resumed.resumed_from == stopped and resumed.generation == TOTAL and not resumed.interrupted
    _, straight = train(tmp_path / "straight")
    assert_trees_equal(resumed.state, straight.state)  # mean, optimizer state, sigma, best, counters
    assert_trees_equal(resumed.fn_state, straight.fn_state)
    assert not np.array_equal(host(resumed.state.mean["w"]), np.zeros((6, 4)))

    # The log reads as one run: every generation once, the rows after the checkpoint re-done identically.
    rows = read_jsonl(run_dir / "metrics.jsonl")
    ref_rows = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["generation"] for r in rows] == list(range(1, TOTAL + 1))
    for r, q in zip(rows, ref_rows, strict=True):
        assert r["mean_fitness"] == q["mean_fitness"] and r["update_norm"] == q["update_norm"]
    steps = _steps(run_dir)
    assert steps[-1] == TOTAL and len(steps) <= 3  # max_to_keep


def test_stop_and_resume_in_process_and_graceful_interrupt(tmp_path):
    from eggroll.checkpoint import GracefulInterrupt

    _, first = train(tmp_path / "a", stop_after=4)
    assert first.interrupted and first.generation == 4
    with pytest.raises(ValueError, match=r"already holds checkpoints .*steps \[3, 4\].*resume=True"):
        train(tmp_path / "a")  # a fresh run must not mix its checkpoints with an old run's
    _, resumed = train(tmp_path / "a", resume=True)
    _, straight = train(tmp_path / "b")
    assert_trees_equal(resumed.state, straight.state)

    # Ctrl-C: the first one only sets the flag; a second one interrupts at once.
    before = signal.getsignal(signal.SIGINT)  # not always the default: pytest may run with SIGINT ignored
    with GracefulInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested == signal.SIGINT and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before  # the handler installed before comes back


def test_train_refuses_a_resume_with_other_settings_and_names_each(tmp_path):
    """A resume with another strategy, population, params, fitness function or key used to run silently."""
    import jax
    import jax.numpy as jnp
    import optax

    import eggroll
    from eggroll import run

    sol = jnp.zeros(6)

    def sphere(x, key):
        return jnp.sum((x - 1.0) ** 2)

    def other(x, key):
        return jnp.sum(x**2)

    def train_(es, fn=sphere, seed=0, **kw):
        return run.train(es, fn, sol, key=jax.random.key(seed), checkpoint_dir=tmp_path, progress=False, **kw)

    es = eggroll.open_es(population_size=8, solution=sol, optimizer=optax.sgd(0.05))
    train_(es, num_generations=3)
    for changed, named in [
        (dict(es=eggroll.open_es(population_size=16, solution=sol, optimizer=optax.sgd(0.05))), "population_size: 8"),
        (dict(es=eggroll.open_es(population_size=8, solution=sol, sigma_init=0.5)), "sigma_init: "),
        (dict(es=eggroll.eggroll(population_size=8, solution=sol, optimizer=optax.sgd(0.05))), "strategy: 'open_es'"),
        (dict(fn=other), "fitness_fn: '.*<locals>.sphere' in the checkpoint, '.*<locals>.other' now"),
        (dict(seed=1), "key: "),
    ]:
        kw = {"es": es, **changed}
        with pytest.raises(ValueError, match=f"other settings \\({named}"):
            train_(kw.pop("es"), num_generations=6, resume=True, **kw)
    assert train_(es, num_generations=6, resume=True).resumed_from == 3  # the same settings resume
    with pytest.raises(ValueError, match="num_generations=0 with resume=True"):
        train_(es, num_generations=0, resume=True)


def test_train_runs_an_evosax_strategy_and_holds_its_folders(tmp_path):
    import jax
    import jax.numpy as jnp

    from eggroll import run
    from eggroll.run.lock import RunLock
    from eggroll.strategies import make

    sol = jnp.zeros(4)
    es = make("evosax:SNES", 8, sol)  # its tell's metrics hold arrays (mean, best_solution_in_generation)

    def train_(**kw):
        fn = lambda x, key: jnp.sum((x - 1.0) ** 2)  # noqa: E731
        return run.train(es, fn, sol, key=jax.random.key(0), progress=False, **kw)

    result = train_(num_generations=3, checkpoint_dir=tmp_path / "ck")
    assert result.generation == 3 and isinstance(result.history[-1]["best_fitness"], float)
    assert "mean" not in result.history[-1]
    with RunLock(tmp_path / "ck", "another"), pytest.raises(ValueError, match=r"in use by another run .*another"):
        train_(num_generations=6, checkpoint_dir=tmp_path / "ck", resume=True)  # one run per folder, from Python too
    with pytest.raises(ValueError, match=r"already holds the metrics of another run \(3 rows"):
        train_(num_generations=2, checkpoint_dir=tmp_path / "new", log_dir=tmp_path / "ck")  # its rows are kept
    assert len((tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()) == 3
    assert train_(num_generations=5, checkpoint_dir=tmp_path / "ck", resume=True).generation == 5


def test_train_resume_from_an_older_step(tmp_path):
    """The damaged-checkpoint message tells Python users to pass resume_from=...; train() now takes it."""
    _, first = train(tmp_path, total=6)
    assert _steps(tmp_path) == [3, 6]
    es, again = train(tmp_path, total=9, resume=True, resume_from=3)
    _, straight = train(tmp_path / "straight", total=9)
    assert again.resumed_from == 3 and again.generation == 9
    assert_trees_equal(again.state, straight.state)


def test_checkpointer_save_turns_numpy_meta_into_json_at_once(tmp_path):
    from eggroll.checkpoint import Checkpointer

    with Checkpointer(tmp_path, async_save=False) as ck:
        assert ck.save(1, {"t": _small_tree()}, {"best": np.float32(1.5), "xs": np.arange(2)})
        with pytest.raises(TypeError, match="object is not JSON"):
            ck.save(2, {"t": _small_tree()}, {"bad": object()})  # refused here, not in orbax's background thread
        assert ck.read_meta(1)["best"] == 1.5 and ck.read_meta(1)["xs"] == [0, 1] and ck.steps() == [1]


def _restore(d, template, step=None):
    """Open, restore and close (managers left open keep orbax threads alive)."""
    from eggroll.checkpoint import Checkpointer

    with Checkpointer(d) as ck:
        return ck.restore(template, step=step)


def _steps(d):
    from eggroll.checkpoint import Checkpointer

    with Checkpointer(d) as ck:
        return ck.steps()


def _small_tree(n=4):
    import jax
    import jax.numpy as jnp

    return {"x": jnp.arange(float(n)), "key": jax.random.key(1), "gen": jnp.int32(n)}


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path):
    from eggroll.checkpoint import Checkpointer

    d = tmp_path / "ck"
    proc = subprocess.run(
        [sys.executable, __file__, "crash", str(d)], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 17, proc.stdout[-2000:] + proc.stderr[-2000:]
    leftovers = [p.name for p in d.iterdir() if p.name.startswith("2")]
    # Killed before finalisation (the usual outcome), before the background thread created the step's folder
    # (seen on a loaded machine), or, on a very fast disk, finished.
    assert leftovers in (["2.orbax-checkpoint-tmp"], [], ["2"]), leftovers
    with Checkpointer(d) as ck:
        if leftovers != ["2"]:
            assert ck.steps() == [1] and ck.latest_step() == 1
        items, meta = ck.restore({"t": _small_tree()}, step=1)
    np.testing.assert_array_equal(np.asarray(items["t"]["x"]), np.arange(4.0))
    assert meta["generation"] == 1

    # A partially written newest step (what any crash leaves: a tmp dir with truncated files) is ignored too.
    shutil.copytree(d / "1", d / "5.orbax-checkpoint-tmp")
    for f in (d / "5.orbax-checkpoint-tmp").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:3])
    with Checkpointer(d) as ck:
        assert ck.latest_step() in (1, 2) and 5 not in ck.steps()
        items, _ = ck.restore({"t": _small_tree()}, step=1)
    np.testing.assert_array_equal(np.asarray(items["t"]["x"]), np.arange(4.0))


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    from eggroll.checkpoint import Checkpointer, CheckpointError

    d = tmp_path / "ck"
    ck = Checkpointer(d, async_save=False)
    ck.save(1, {"t": _small_tree()}, {"generation": 1})
    ck.save(2, {"t": _small_tree()}, {"generation": 2})
    ck.close()
    # Damage every array file of the newest step (a bad disk, a hand edit).
    for f in (d / "2" / "items").rglob("*"):
        if f.is_file() and "METADATA" not in f.name and f.name != "commit_success.txt":
            f.write_bytes(b"\0garbage")
    with pytest.raises(CheckpointError) as e:
        _restore(d, {"t": _small_tree()})
    msg = str(e.value)
    assert str(d) in msg and "step 2" in msg and "is damaged" in msg and "--resume-from 1" in msg
    (d / "2" / "eggroll-checksum.json").unlink()  # unsealed (as if killed before the checksum): orbax fails to read
    with pytest.raises(CheckpointError) as e:
        _restore(d, {"t": _small_tree()})
    msg = str(e.value)
    assert "step 2" in msg and "could not be read" in msg and "--resume-from 1" in msg
    assert "delete" not in msg and "<" not in msg  # no advice to delete folders, no pybind / TensorStore repr
    items, _ = _restore(d, {"t": _small_tree()}, step=1)  # the older step still restores
    assert int(items["t"]["gen"]) == 4


def test_mismatched_or_missing_checkpoint_gives_a_clear_error(tmp_path):
    from eggroll.checkpoint import Checkpointer, CheckpointError

    d = tmp_path / "ck"
    with pytest.raises(CheckpointError, match=r"No finished checkpoint in .*ck.*without --resume"):
        _restore(d, {"t": _small_tree()})
    assert not d.exists()  # a mistyped path is not left behind as an empty folder
    ck = Checkpointer(d, async_save=False)
    assert ck.save(3, {"t": _small_tree()}, {"generation": 3})
    assert not ck.save(3, {"t": _small_tree()})  # an existing step is never overwritten
    ck.close()
    mismatch = r"ck/3 does not match this run: leaf \['t'\]\['x'\] is float32\[4\] in the checkpoint but float32\[5\]"
    with pytest.raises(CheckpointError, match=mismatch + r" here.*fresh checkpoint folder"):
        _restore(d, {"t": _small_tree(5)})
    with pytest.raises(CheckpointError, match=r"has no leaf \['u'\]"):
        _restore(d, {"u": _small_tree()})
    with pytest.raises(CheckpointError, match=r"Step 7 is not in .*available steps: \[3\]"):
        _restore(d, {"t": _small_tree()}, step=7)
    items, meta = _restore(d, {"t": _small_tree()})
    import jax

    assert jax.numpy.issubdtype(items["t"]["key"].dtype, jax.dtypes.prng_key)  # typed keys come back typed
    np.testing.assert_array_equal(
        np.asarray(jax.random.key_data(items["t"]["key"])), np.asarray(jax.random.key_data(jax.random.key(1)))
    )


def _worker(argv):
    mode, directory = argv[0], Path(argv[1])
    if mode == "train":
        _, result = train(directory, total=int(argv[2]), sleep=float(argv[3]))
        if result.interrupted:
            print(f"interrupted at generation {result.generation}", flush=True)
        return 0
    if mode == "crash":
        import jax.numpy as jnp

        from eggroll.checkpoint import Checkpointer

        ck = Checkpointer(directory, async_save=True)
        ck.save(1, {"t": _small_tree()}, {"generation": 1})
        ck.wait()
        big = {"t": {"x": jnp.ones((4000, 4000)), "key": _small_tree()["key"], "gen": jnp.int32(2)}}
        ck.save(2, big, {"generation": 2})  # returns once the arrays are on the host; writing continues
        os._exit(17)  # die in the middle of the background write
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
