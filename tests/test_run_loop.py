"""The one run loop (``eggroll.run.loop``): schedule, stop rules, checkpoints, resume, failures, records."""

from __future__ import annotations

import json
import os
import signal
import time

import jax.numpy as jnp
import pytest

from eggroll.run.checkpoint import CheckpointError
from eggroll.run.logging import read_jsonl
from eggroll.run.loop import GenerationFailed, RunOptions, Task, is_wall_clock, run, without_wall_clock


class Count(Task):
    """Adds 1 per generation; evaluates to 10 x; optional target, failure, sleep and signal."""

    name = "count"
    columns = ("generation", "x", "eval", "seconds")

    def __init__(self, target=None, fail_at=None, sleep=0.0, signal_at=None, scale=1.0):
        self.target, self.fail_at, self.sleep, self.signal_at, self.scale = target, fail_at, sleep, signal_at, scale
        self.evaluated: list[int] = []
        self.host = 0

    def settings(self):
        return {"scale": self.scale}

    def init(self):
        return {"x": jnp.zeros((), jnp.float32)}

    def step(self, carry, generation):
        if generation == self.fail_at:
            raise ConnectionError("the backend went away")
        if generation == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(self.sleep)
        self.host += 1
        x = carry["x"] + self.scale
        return {"x": x}, {"x": float(x)}

    def evaluate(self, carry, generation):
        self.evaluated.append(generation)
        return carry, {"eval": 10.0 * float(carry["x"])}

    def done(self, row):
        return self.target is not None and row.get("eval", 0.0) >= self.target

    def save_extra(self):
        return {"host": self.host}

    def load_extra(self, extra):
        self.host = extra["host"]

    def finish(self, carry, result):
        return {"x": float(carry["x"]), "host": self.host}


def _strip(rows):
    return [{k: v for k, v in r.items() if not is_wall_clock(k)} for r in rows]


def test_schedule_rows_and_record(tmp_path):
    task = Count()
    result = run(task, RunOptions(out=tmp_path, generations=7, eval_every=3, quiet=True))
    assert task.evaluated == [0, 3, 6, 7]  # before the first, on the schedule, after the last
    assert [r["generation"] for r in result.history] == list(range(8))
    assert [r.get("eval") for r in result.history] == [0.0, None, None, 30.0, None, None, 60.0, 70.0]
    assert _strip(read_jsonl(tmp_path / "metrics" / "metrics.jsonl")) == _strip(
        [{k: v for k, v in r.items() if v is not None} for r in result.history]
    )
    head = (tmp_path / "metrics" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert head[:4] == ["generation", "x", "eval", "seconds"]  # the task's columns first
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["command"] == "count" and record["generation"] == 7 and record["stopped_by"] == "generations"
    assert record["x"] == 7.0 and record["host"] == 7 and record["final"]["eval"] == 70.0
    assert result.exit_code == 0 and not result.interrupted


def test_target_stops_after_an_evaluation(tmp_path):
    task = Count(target=45.0)
    result = run(task, RunOptions(out=tmp_path, generations=50, eval_every=2, quiet=True))
    assert result.stopped_by == "target" and result.generation == 6  # 10 x passes 45 at the evaluation of x = 6
    assert task.evaluated == [0, 2, 4, 6]
    assert json.loads((tmp_path / "result.json").read_text())["stopped_by"] == "target"


def test_time_budget_ends_the_run_within_it(tmp_path):
    start = time.perf_counter()  # 3 s: the run's own start (orbax, the metrics files) took 1 s on a loaded machine
    result = run(Count(sleep=0.1), RunOptions(out=tmp_path, generations=10_000, time_budget=3.0, quiet=True))
    elapsed = time.perf_counter() - start
    assert result.stopped_by == "time_budget" and 3 < result.generation < 30
    assert elapsed < 3.0 + 0.5  # the estimate stops before the budget; the rest is writing files
    assert result.history[-1].get("eval") is not None  # the last generation is evaluated
    assert result.note == ""


def test_a_time_budget_spent_by_the_start_up_is_said(tmp_path):
    """`eggroll rl --time-budget 1` took 12 s and said only "time budget reached": the start-up (imports,
    compiling) had spent it. A run still does its one generation, and now says why it overran."""
    started = time.perf_counter() - 3.0  # as if the process had spent 3 s before the loop
    options = RunOptions(out=tmp_path, generations=100, time_budget=2.0, started=started, quiet=True)
    result = run(Count(), options)
    assert result.stopped_by == "time_budget" and result.generation == 1
    assert result.note.startswith("the 2 s time budget was spent before a second generation could run (3.")


def test_stop_and_resume_equal_an_uninterrupted_run(tmp_path):
    whole = run(Count(), RunOptions(out=tmp_path / "whole", generations=9, eval_every=2, quiet=True))
    first = run(Count(), RunOptions(out=tmp_path / "split", generations=9, eval_every=2, stop_after=4, quiet=True))
    assert first.interrupted == "stop_after" and first.generation == 4
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(Count(), RunOptions(out=tmp_path / "split", generations=9, quiet=True))
    with pytest.raises(ValueError, match=r"scale: 1.0 in the checkpoint, 2.0 now"):
        run(Count(scale=2.0), RunOptions(out=tmp_path / "split", generations=9, resume=True, quiet=True))
    task = Count()
    rest = run(task, RunOptions(out=tmp_path / "split", generations=9, eval_every=2, resume=True, quiet=True))
    assert rest.resumed_from == 4 and task.evaluated == [6, 8, 9]  # no extra evaluation at the stop
    assert _strip(rest.history) == _strip(whole.history) and task.host == 9  # host-side state came back
    for name in ("metrics/metrics.jsonl", "result.json"):
        read = (lambda p: _strip(read_jsonl(p))) if name.endswith("l") else (lambda p: json.loads(p.read_text()))
        got, want = read(tmp_path / "split" / name), read(tmp_path / "whole" / name)
        if name == "result.json":
            got.pop("seconds"), want.pop("seconds")
        assert got == want


def test_resume_without_a_checkpoint_is_an_error_unless_allowed(tmp_path):
    with pytest.raises(CheckpointError, match="No finished checkpoint"):
        run(Count(), RunOptions(out=tmp_path / "none", generations=3, resume=True, quiet=True))
    assert not (tmp_path / "none" / "checkpoints").exists()
    ok = run(Count(), RunOptions(out=tmp_path / "ok", generations=3, resume=True, resume_missing_ok=True, quiet=True))
    assert ok.generation == 3 and ok.resumed_from is None


def test_a_failing_generation_keeps_the_last_finished_one(tmp_path):
    with pytest.raises(GenerationFailed, match="generation 5 failed: .* Generation 4 is saved in ") as failed:
        run(Count(fail_at=5), RunOptions(out=tmp_path, generations=9, checkpoint_every=3, quiet=True))
    assert isinstance(failed.value.__cause__, ConnectionError) and failed.value.saved_generation == 4
    with pytest.raises(ConnectionError):  # a run without checkpoints raises the error itself
        run(Count(fail_at=2), RunOptions(generations=9, quiet=True))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3, 4]  # the schedule's 3, and 4, the last finished generation
    rest = run(Count(), RunOptions(out=tmp_path, generations=9, resume=True, quiet=True))
    assert rest.resumed_from == 4 and float(rest.carry["x"]) == 9.0


def test_sigterm_finishes_the_generation_saves_and_exits_143(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    result = run(Count(signal_at=3), RunOptions(out=tmp_path, generations=9, eval_every=3, quiet=True))
    assert signal.getsignal(signal.SIGTERM) is before  # the handler that was installed before comes back
    assert result.stopped_by == "SIGTERM" and result.exit_code == 143 and result.generation == 3
    assert json.loads((tmp_path / "result.json").read_text())["stopped_by"] == "SIGTERM"
    rest = run(Count(), RunOptions(out=tmp_path, generations=9, eval_every=3, resume=True, quiet=True))
    assert rest.resumed_from == 3 and [r["generation"] for r in rest.history] == list(range(10))


def test_ctrl_c_before_the_loop_stops_the_run_before_anything_runs(tmp_path):
    """A Ctrl-C while a command still loads (interrupt_early's flag) stops the run before the initial evaluation:
    nothing saved or written, fresh or resumed, and the next run (fresh, or the resume) is the same as without it.
    (Python's own handler raised KeyboardInterrupt wherever the program was: in JAX's gc callback the interrupt was
    lost and the run went on to its end, as found by hand.)"""
    from eggroll.run import checkpoint

    checkpoint._EARLY["signal"] = signal.SIGINT
    task = Count()
    stopped = run(task, RunOptions(out=tmp_path, generations=3, eval_every=1, quiet=True))
    assert (stopped.began, stopped.stopped_by, stopped.exit_code, stopped.generation) == (False, "SIGINT", 130, 0)
    assert task.evaluated == [] and stopped.checkpoint_dir is None and not (tmp_path / "result.json").exists()
    assert checkpoint._EARLY["signal"] is None  # taken by the loop: the next run is not stopped by it
    first = run(Count(), RunOptions(out=tmp_path, generations=3, eval_every=1, quiet=True))  # not refused
    assert first.began and first.generation == 3 and (tmp_path / "result.json").exists()

    checkpoint._EARLY["signal"] = signal.SIGINT  # the same, for a resume: its checkpoint is left as it was
    record = (tmp_path / "result.json").read_text()
    again = run(Count(), RunOptions(out=tmp_path, generations=6, eval_every=1, resume=True, quiet=True))
    assert not again.began and again.resumed_from == 3 and again.checkpoint_dir is not None
    assert (tmp_path / "result.json").read_text() == record
    rest = run(Count(), RunOptions(out=tmp_path, generations=6, eval_every=1, resume=True, quiet=True))
    assert rest.resumed_from == 3 and [r["generation"] for r in rest.history] == list(range(7))


def test_ctrl_c_outside_a_run_command_is_pythons_own():
    """Unarmed (`eggroll evollm serve`, `lm sample`, a run's last files) the CLI's handler raises KeyboardInterrupt at
    once, as Python's does: the server stops at the first Ctrl-C instead of waiting for a loop that never comes."""
    from eggroll.run import checkpoint

    before = signal.getsignal(signal.SIGINT)
    try:
        checkpoint.interrupt_early()
        assert signal.getsignal(signal.SIGINT) is checkpoint._early_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert checkpoint._EARLY["signal"] is None
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_while_a_command_loads_exits_130_and_saves_nothing(tmp_path):
    """`eggroll rl` with Ctrl-C arriving while its task is built (as while a model loads): one press stops it
    before the first generation (exit 130, nothing written); two presses stop it at once (exit 130, one line)."""
    import subprocess
    import sys
    import textwrap

    def command(presses: int, out, sig: str = "SIGINT") -> subprocess.CompletedProcess:
        code = textwrap.dedent(
            f"""
            import os, signal, sys
            import eggroll.apps.rl as rl
            build = rl.RLTask.__init__
            def loading(self, *args, **kwargs):
                for _ in range({presses}):
                    os.kill(os.getpid(), signal.{sig})  # Ctrl-C (or a scheduler's SIGTERM) while the command loads
                build(self, *args, **kwargs)
            rl.RLTask.__init__ = loading
            sys.argv = ["eggroll", "rl", "--generations", "2", "--population", "8", "--hidden", "4"]
            sys.argv += ["--out", {str(out)!r}]
            from eggroll.cli import main
            main()
            """
        )
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, start_new_session=True
        )

    once = command(1, tmp_path / "once")
    text = " ".join((once.stdout + once.stderr).split())
    assert once.returncode == 130, text[-2000:]
    assert "Ctrl-C: the run stops before its first generation" in text, text[-2000:]
    assert "stopped by SIGINT before the run began: nothing was saved" in text and "Traceback" not in text
    assert not (tmp_path / "once" / "result.json").exists()
    assert not any((tmp_path / "once" / "checkpoints").iterdir())

    twice = command(2, tmp_path / "twice")
    lines = [line for line in twice.stderr.splitlines() if line.strip() and not line.startswith("Ctrl-C")]
    assert twice.returncode == 130 and "Traceback" not in twice.stderr, twice.stderr[-2000:]
    assert lines == [
        "stopped by Ctrl-C (SIGINT); what was saved before it is kept (a checkpoint: continue with "
        "the same command plus --resume)"
    ], twice.stderr[-2000:]

    # a SIGTERM while loading (a preempted job) is kept the same way (it was the default action: killed at once)
    term = command(1, tmp_path / "term", "SIGTERM")
    text = " ".join((term.stdout + term.stderr).split())
    assert term.returncode == 143, text[-2000:]
    assert "SIGTERM: the run stops before its first generation" in text, text[-2000:]
    assert "stopped by SIGTERM before the run began: nothing was saved" in text and "Traceback" not in text


def test_log_every_keeps_every_kth_row_and_the_last(tmp_path):
    result = run(Count(), RunOptions(out=tmp_path, generations=7, log_every=3, checkpoint_every=2, quiet=True))
    assert [r["generation"] for r in result.history] == [0, 3, 6, 7]

    # a stop by stop_after (or a signal) off the schedule logs no extra row: the resumed run's rows are the same
    opts = dict(generations=7, log_every=3, checkpoint_every=2, quiet=True)
    run(Count(), RunOptions(out=tmp_path / "a", stop_after=4, **opts))
    resumed = run(Count(), RunOptions(out=tmp_path / "a", resume=True, **opts))
    assert [r["generation"] for r in resumed.history] == [0, 3, 6, 7]
    rows = [_strip(read_jsonl(d / "metrics" / "metrics.jsonl")) for d in (tmp_path / "a", tmp_path)]
    assert rows[0] == rows[1]


def test_stop_after_reached_by_the_checkpoint_runs_nothing_more(tmp_path):
    """A time-boxed job restarted with the same stop_after used to run one more generation per restart."""
    opts = dict(out=tmp_path, generations=10, stop_after=4, quiet=True)
    assert run(Count(), RunOptions(**opts)).generation == 4
    again = run(Count(), RunOptions(resume=True, **opts))
    assert again.generation == 4 and again.stopped_by == "stop_after" and _steps(tmp_path / "checkpoints") == [4]


def test_a_callback_that_raises_keeps_the_finished_generation(tmp_path):
    def callback(generation, row):
        if generation == 5:
            raise RuntimeError("the user's callback failed")

    with pytest.raises(RuntimeError, match="the user's callback failed") as raised:
        run(Count(), RunOptions(out=tmp_path, generations=9, checkpoint_every=3, quiet=True), callback=callback)
    assert _steps(tmp_path / "checkpoints")[-1] == 5  # generation 5 finished: it is not computed again
    assert "generation 5 finished before the callback raised; it is saved in" in "".join(raised.value.__notes__)
    resumed = run(Count(), RunOptions(out=tmp_path, generations=9, resume=True, quiet=True))
    assert resumed.resumed_from == 5 and float(resumed.carry["x"]) == 9.0


def test_a_task_may_return_array_metrics_they_are_left_out_of_the_rows(tmp_path):
    class WithArray(Count):
        columns = None

        def step(self, carry, generation):
            carry, row = super().step(carry, generation)
            return carry, {**row, "mean": jnp.ones(3), "one": jnp.ones(1)}  # e.g. evosax's tell metrics

    result = run(WithArray(), RunOptions(out=tmp_path, generations=2, quiet=True))
    assert "mean" not in result.history[-1] and result.history[-1]["one"] == 1.0


def test_no_checkpoints_option_and_bad_options():
    Count_ = Count()
    result = run(Count_, RunOptions(generations=2, quiet=True))  # no out: nothing written, no record
    assert result.generation == 2 and result.checkpoint_dir is None and result.record == {}
    for bad, match in [
        (dict(generations=0), "--generations must be a whole number >= 1"),
        (dict(checkpoint_every=0), "--checkpoint-every must be a whole number >= 1"),
        (dict(time_budget=float("nan")), "--time-budget must be a positive number"),
        (dict(time_budget=-1.0), "--time-budget must be a positive number"),
        (dict(eval_every=-2), "--eval-every must be a whole number >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            RunOptions(**bad).validate()


def test_a_live_run_holds_its_folder_and_a_stale_lock_is_taken_over(tmp_path):
    import socket
    import subprocess

    from eggroll.run.lock import LOCK_NAME

    holder = subprocess.Popen(["sleep", "60"])
    try:
        tmp_path.mkdir(exist_ok=True)
        record = {"pid": holder.pid, "host": socket.gethostname(), "command": "rl", "since": time.time()}
        (tmp_path / LOCK_NAME).write_text(json.dumps(record))
        with pytest.raises(ValueError, match=rf"is in use by another run \(`eggroll rl`, pid {holder.pid} on "):
            run(Count(), RunOptions(out=tmp_path, generations=2, quiet=True))
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    result = run(Count(), RunOptions(out=tmp_path, generations=2, quiet=True))  # the holder is dead: stale lock
    assert result.generation == 2 and not (tmp_path / LOCK_NAME).exists()  # released at the end
    with pytest.raises(CheckpointError):
        run(Count(), RunOptions(out=tmp_path / "typo", generations=2, resume=True, quiet=True))
    assert not (tmp_path / "typo").exists()  # a mistyped --resume folder is not left behind


def _steps(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _damage(step_dir, nbytes=20):
    """Overwrite bytes inside the largest data file of a step, as `dd conv=notrunc` would (issue 13, item 1)."""
    data = max((p for p in step_dir.rglob("*") if p.is_file() and "items" in p.parts), key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:
        f.seek(max(0, data.stat().st_size // 2 - nbytes // 2))
        f.write(bytes(255 - b for b in f.read(nbytes))[:nbytes].ljust(nbytes, b"\x00"))
    return data


def test_a_damaged_checkpoint_is_refused_named_and_the_newest_good_one_is_kept(tmp_path):
    opts = dict(out=tmp_path, checkpoint_every=3, max_to_keep=2, quiet=True)
    run(Count(), RunOptions(generations=9, **opts))
    ckpt = tmp_path / "checkpoints"
    assert _steps(ckpt) == [6, 9]
    for step in (6, 9):  # every kept step carries the checksum of its files
        assert (ckpt / str(step) / "eggroll-checksum.json").is_file()
    damaged = _damage(ckpt / "9")

    with pytest.raises(CheckpointError) as refused:
        run(Count(), RunOptions(generations=12, resume=True, **opts))
    message = str(refused.value)
    assert f"step 9 in {ckpt} is damaged: {damaged.relative_to(ckpt / '9')} does not match its checksum" in message
    assert "newest step that verifies is 6" in message and "--resume-from 6" in message
    assert _steps(ckpt) == [6, 9]  # nothing deleted, nothing overwritten

    resumed = run(Count(), RunOptions(generations=12, resume=True, resume_from=6, **opts))
    reference = run(Count(), RunOptions(generations=12, out=tmp_path / "ref", checkpoint_every=3, quiet=True))
    assert resumed.resumed_from == 6 and float(resumed.carry["x"]) == float(reference.carry["x"]) == 12.0
    assert without_wall_clock(resumed.history) == without_wall_clock(reference.history)
    assert _steps(tmp_path / "checkpoints.set-aside") == [9]  # the damaged step is kept aside, never read again
    assert _steps(ckpt) == [9, 12]  # generation 9 saved anew; 6 goes only once two newer steps are sealed

    # damage in a step's record (its meta) is named by the checksum too, not read first as "could not be read"
    meta = next(p for p in (ckpt / "12").rglob("*") if p.is_file() and "meta" in p.parts and p.stat().st_size > 2)
    meta.write_text("{")
    with pytest.raises(CheckpointError, match=r"step 12 in .* is damaged: .*meta.* newest step that verifies is 9"):
        run(Count(), RunOptions(generations=15, resume=True, **opts))


def test_a_step_is_deleted_only_when_newer_sealed_steps_replace_it(tmp_path):
    from eggroll.run.checkpoint import Checkpointer

    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, {"x": jnp.full((), step)})
            ckpt.wait()
            assert ckpt.sealed(step) and _steps(tmp_path)[-1] == step
        assert _steps(tmp_path) == [2, 3]
        (tmp_path / "3" / "eggroll-checksum.json").unlink()  # 3 as if the process died before sealing it
        ckpt.save(4, {"x": jnp.full((), 4)})  # seals 3 again first, then saves 4
        ckpt.wait()
        assert _steps(tmp_path) == [3, 4] and all(ckpt.sealed(s) for s in (3, 4))
