"""Two JAX processes on localhost train one EGGROLL run together (CPU collectives over gloo).

Each process has 2 CPU devices, so the mesh spans 4 devices in 2 processes;
they join through :func:`eggroll.parallel.init_distributed` reading the
``EGGROLL_*`` environment variables, as a CLI launched on two hosts would.
Both must end with the same mean as a single process with the same seed, and
their shared orbax checkpoint and process-0 metrics log must be usable.

This file is also the worker script: ``python tests/test_multihost.py OUT_DIR``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

GENERATIONS = 3
POPULATION = 16
SHAPE = (12, 8)


def problem():
    import jax.numpy as jnp
    import optax

    import eggroll

    solution = {"w": jnp.zeros(SHAPE), "b": jnp.zeros(SHAPE[1])}
    x = jnp.linspace(-1.0, 1.0, 2 * SHAPE[0]).reshape(2, SHAPE[0])

    def fitness(member, key):
        del key
        return jnp.mean((eggroll.lowrank.matmul(x, member["w"]) + member["b"][None] - 0.3) ** 2)

    es = eggroll.eggroll(population_size=POPULATION, solution=solution, optimizer=optax.sgd(0.1))
    return es, fitness, solution


def worker(out: Path) -> None:
    from eggroll import parallel

    joined = parallel.init_distributed()  # EGGROLL_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID
    import jax

    from eggroll import run

    es, fitness, solution = problem()
    mesh = parallel.make_mesh()
    result = run.train(
        es,
        fitness,
        solution,
        key=jax.random.key(7),
        num_generations=GENERATIONS,
        mesh=mesh,
        checkpoint_dir=out / "ckpt",
        checkpoint_every=2,
        progress=False,
    )
    mean = run.mean_of(es, result)
    pid = jax.process_index()
    np.savez(out / f"mean_{pid}.npz", **mean)
    info = {"joined": joined, "process_count": jax.process_count(), "devices": mesh.size}
    (out / f"info_{pid}.json").write_text(json.dumps(info))


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every process (killing all of them if one hangs); each must exit 0. Returns their outputs."""
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outputs, strict=True):
        assert p.returncode == 0, o[-3000:]
    return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_together_like_one(tmp_path):
    import jax

    from eggroll import run
    from eggroll.checkpoint import Checkpointer
    from eggroll.logging import read_jsonl

    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            EGGROLL_COORDINATOR=f"127.0.0.1:{port}",
            EGGROLL_NUM_PROCESSES="2",
            EGGROLL_PROCESS_ID=str(pid),
            JAX_PLATFORMS="cpu",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    _finish(procs, timeout=240)

    infos = [json.loads((tmp_path / f"info_{i}.json").read_text()) for i in range(2)]
    assert all(i["joined"] and i["process_count"] == 2 and i["devices"] == 4 for i in infos), infos

    # Single process, one device, same seed.
    es, fitness, solution = problem()
    ref = run.mean_of(es, run.train(es, fitness, solution, key=jax.random.key(7), num_generations=GENERATIONS))
    for pid in range(2):
        got = np.load(tmp_path / f"mean_{pid}.npz")
        for k in ref:
            # Exact: the update is computed replicated from the same all-gathered fitness ranks.
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"process {pid}, leaf {k}")
    assert not np.array_equal(ref["w"], np.zeros(SHAPE))

    # One shared checkpoint directory (steps 2 and the final 3), one log written by process 0.
    with Checkpointer(tmp_path / "ckpt") as ck:
        assert ck.steps() == [2, 3]
    rows = read_jsonl(tmp_path / "ckpt" / "metrics.jsonl")
    assert [r["generation"] for r in rows] == list(range(1, GENERATIONS + 1))


def test_two_processes_run_the_rl_command_together_like_one(tmp_path):
    """`eggroll --coordinator ... rl` on 2 processes x 2 devices: one shared run, the same policy as one device.

    Pendulum's returns differ between members, so the ranking and the update are exercised (CartPole's short
    episodes would tie). The observation statistics and the update are sums across devices, so they (and the
    returns of later generations, which use the statistics) differ from one device only by summation order.
    """
    import jax

    from eggroll.checkpoint import Checkpointer
    from eggroll.rl_train import build, load_policy

    port = _free_port()
    args = ["rl", "--env", "Pendulum-v1", "--generations", "5", "--population", "16", "--horizon", "30"]
    args += ["--rollouts", "1", "--hidden", "4", "--eval-every", "3", "--eval-episodes", "1", "--quiet"]
    # a checkpoint every generation: older steps are pruned, a collective in orbax (it hung with 2 processes)
    args += ["--checkpoint-every", "1", "--sigma", "0.2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EGGROLL_", "JAX_"))}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "eggroll.cli", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
            + ["--process-id", str(i), *args, "--out", str(tmp_path / "multi")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outputs = _finish(procs, timeout=300)
    assert "population split over 4 devices (2 process(es))" in outputs[0]
    assert "best evaluated return" in outputs[0] and "best evaluated return" not in outputs[1]  # process 0 reports

    single = subprocess.run(
        [sys.executable, "-m", "eggroll.cli", *args, "--out", str(tmp_path / "single"), "--devices", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
    rows = [
        [json.loads(line) for line in (tmp_path / d / "metrics" / "metrics.jsonl").read_text().splitlines()]
        for d in ("multi", "single")
    ]
    assert [r["generation"] for r in rows[0]] == [0, 1, 2, 3, 4, 5]  # 0: the initial policy's evaluation
    assert rows[0][0]["eval_return"] == rows[1][0]["eval_return"]  # the same initial policy and episodes
    rows = [rs[1:] for rs in rows]
    assert rows[0][0]["mean_return"] == rows[1][0]["mean_return"]  # generation 1: the same episodes exactly
    np.testing.assert_allclose([r["mean_return"] for r in rows[0]], [r["mean_return"] for r in rows[1]], rtol=1e-4)
    (config, p_multi, s_multi), (_, p_single, s_single) = (load_policy(tmp_path / d) for d in ("multi", "single"))
    initial = build(config)[3]
    assert not np.array_equal(jax.tree.leaves(p_single)[0], jax.tree.leaves(initial)[0])
    for a, b in zip(jax.tree.leaves((p_multi, s_multi)), jax.tree.leaves((p_single, s_single)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with Checkpointer(tmp_path / "multi" / "checkpoints") as ck:  # one shared series, pruned to the newest two
        assert ck.steps() == [4, 5]


def test_processes_started_with_different_settings_are_refused(tmp_path):
    """Another --seed on process 1 ran a silently wrong run (each process perturbed its own mean)."""
    procs = _rl_processes(tmp_path, "run", "--generations", "3", per_process=lambda i: ["--seed", str(7 * i)])
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outputs
    for _, err in outputs:
        assert "process(es) 1 were started with other settings than process 0 (seed)" in err, err[-2000:]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))


def _rl_processes(tmp_path, out: str, *extra: str, env_extra: dict | None = None, count: int = 2, per_process=None):
    port = _free_port()
    args = ["rl", "--env", "Pendulum-v1", "--generations", "400", "--population", "16", "--horizon", "30"]
    args += ["--rollouts", "1", "--hidden", "4", "--eval-every", "50", "--eval-episodes", "1", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EGGROLL_", "JAX_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", **(env_extra or {}))
    return [
        subprocess.Popen(
            [sys.executable, "-m", "eggroll.cli", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
            + ["--process-id", str(i), *args, "--out", str(tmp_path / out), *extra]
            + (per_process(i) if per_process else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(count)
    ]


def _wait_for_rows(path: Path, rows: int, procs, timeout: float = 300) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {rows} rows")


def test_sigterm_to_one_process_stops_both_at_the_same_generation_with_a_checkpoint(tmp_path):
    """Issue 13, item 3: the stop is agreed through a collective every generation, so no process hangs."""
    import signal

    from eggroll.run.checkpoint import Checkpointer

    procs = _rl_processes(tmp_path, "run", "--checkpoint-every", "1000")
    _wait_for_rows(tmp_path / "run" / "metrics" / "metrics.jsonl", 4, procs)
    procs[1].send_signal(signal.SIGTERM)  # the process that does not write the files
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outputs
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["stopped_by"] == "SIGTERM"
    with Checkpointer(tmp_path / "run" / "checkpoints") as ck:  # saved at the agreed generation
        assert ck.steps() == [record["generation"]]
    resumed = _rl_processes(tmp_path, "run", "--resume", "--generations", str(record["generation"] + 2))
    outputs = [p.communicate(timeout=300) for p in resumed]
    assert [p.returncode for p in resumed] == [0, 0], outputs
    assert f"resumed from generation {record['generation']}" in " ".join(outputs[0][0].split())


def test_a_killed_process_stops_the_other_with_one_line_within_the_peer_timeout(tmp_path):
    import time

    procs = _rl_processes(tmp_path, "run", env_extra={"EGGROLL_PEER_TIMEOUT": "5"})
    _wait_for_rows(tmp_path / "run" / "metrics" / "metrics.jsonl", 3, procs)
    procs[1].kill()
    start = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    assert time.monotonic() - start < 60, "the survivor must stop within the peer timeout (plus a margin)"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "resume" in lines[0], err[-3000:]
    # either the peer watch noticed first (exit 1), or a collective with the dead peer failed first (exit 2)
    watched = procs[0].returncode == 1 and "process 1 showed no sign of life for 5 s" in lines[0]
    failed = procs[0].returncode == 2 and "failed" in lines[0]
    assert watched or failed, (procs[0].returncode, lines[0])
    assert "Check failure" not in err and "*** " not in err  # no glog abort, no C++ stack


def test_a_killed_coordinator_ends_the_other_process_at_once_and_its_checkpoint_resumes(tmp_path):
    """kill -9 of process 0 (it serves JAX's coordination service): JAX aborts process 1 within a second (a C++
    stack; its missed_heartbeat_callback cannot call Python, docs/reliability.md), so no process hangs, and the
    newest checkpoint is intact for --resume."""
    import time

    from eggroll.run.checkpoint import Checkpointer, verify_step

    procs = _rl_processes(tmp_path, "run", "--checkpoint-every", "2")
    _wait_for_rows(tmp_path / "run" / "metrics" / "metrics.jsonl", 6, procs)
    procs[0].kill()
    start = time.monotonic()
    procs[1].communicate(timeout=120)
    procs[0].communicate()
    assert time.monotonic() - start < 30 and procs[1].returncode != 0, "process 1 must not go on alone"
    with Checkpointer(tmp_path / "run" / "checkpoints") as ck:
        step = ck.latest_step()
    assert step is not None and step >= 2
    assert verify_step(tmp_path / "run" / "checkpoints" / str(step)) is None  # intact: what --resume reads


def test_a_process_waiting_for_its_peers_says_so(tmp_path):
    import time

    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        alone = subprocess.Popen(
            [sys.executable, "-m", "eggroll.cli", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes"]
            + ["2", "--process-id", "0", "version"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={k: v for k, v in os.environ.items() if not k.startswith(("EGGROLL_", "JAX_"))},
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "waiting for" not in log.read_text() and alone.poll() is None:
            time.sleep(0.2)
        alone.kill()
        alone.wait(timeout=60)
    assert "process 0: waiting for the other 1 process at 127.0.0.1:" in log.read_text(), log.read_text()[-2000:]


def test_a_taken_coordinator_port_and_a_bad_process_count_are_one_line():
    """A port in use crashed process 0 inside jax.distributed (SIGSEGV here, a traceback elsewhere); a negative
    --num-processes blamed the process id."""
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith(("EGGROLL_", "JAX_"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = (("2", f"process 0 cannot listen on port {port}"), ("-1", "--num-processes must be >= 1"))
        for count, message in cases:
            r = subprocess.run(
                [sys.executable, "-m", "eggroll.cli", "--coordinator", f"127.0.0.1:{port}", "--num-processes", count]
                + ["--process-id", "0", "version"],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
            assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
