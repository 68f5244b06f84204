"""Every command runs on the one loop: stopped by a real SIGTERM and resumed, it leaves the same files.

For each command (small settings), three real processes: an uninterrupted run
into ``whole/``; a run into ``split/`` that receives SIGTERM once a few
generations are logged (it must exit 143 with the ``--resume`` hint); the same
command with ``--resume`` (exit 0). Then every file in ``--out`` is compared
with the uninterrupted run's: JSON / JSONL / CSV after dropping wall-clock
fields (:func:`eggroll.run.loop.is_wall_clock`) and with the folder name
replaced, every other file byte for byte. Checkpoints and TensorBoard event
files are not compared (they hold timestamps by design).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eggroll.run.loop import is_wall_clock, without_wall_clock

RL = ["--env", "CartPole-v1", "--population", "8", "--horizon", "30", "--rollouts", "1", "--hidden", "4"]
RL += ["--eval-every", "3", "--eval-episodes", "1", "--generations", "14"]

COMMANDS = {
    "demo": ["--generations", "240", "--population", "32"],
    "rl": RL,
    "bbob": ["--strategies", "cma_es,open_es", "--functions", "1,21", "--dims", "2", "--instances", "1-2"]
    + ["--budget", "200", "--chunk-generations", "2"],
    "lm": ["--width", "16", "--depth", "1", "--population", "32", "--chunk", "16", "--generations", "24"]
    + ["--eval-every", "5", "--sample-length", "40"],
    "evollm": ["--generations", "5", "--dim", "2", "--population", "6", "--archive-size", "4"],
    "finetune": ["--task", "python", "--generations", "6", "--population", "8", "--prompts", "2"]
    + ["--max-new-tokens", "4", "--eval-every", "2", "--eval-prompts", "2", "--sigma", "0.05", "--lr", "0.005"],
}


def _setup(command: str, tmp_path: Path) -> list[str]:
    """Files a command needs, made here: finetune evolves a tiny GGUF model on a Python reward."""
    if command != "finetune":
        return []
    from test_apps_finetune import _model_and_reward

    model, reward = _model_and_reward(tmp_path)
    return ["--model", str(model), "--reward", f"{reward}:digits"]


UNIT = {"demo": "chunk", "bbob": "chunk"}  # what the closing lines count (the loop's generations)
SKIP = ("checkpoints", "checkpoints.set-aside", "tensorboard")
SETUP: dict[str, list[str]] = {}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    return env


def _cli(command: str, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "eggroll.cli", command, *COMMANDS[command], *SETUP.get(command, [])]
    return [*args, "--checkpoint-every", "1", "--quiet", "--out", str(out), *extra]


def _logged(out: Path) -> int:
    path = out / "metrics" / "metrics.jsonl"
    if not path.exists():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((r["generation"] for r in rows), default=0)


def _strip(value, out: Path):
    """Without wall-clock fields, and with the run's folder spelled ``<out>``."""
    return json.loads(json.dumps(without_wall_clock(value)).replace(str(out), "<out>"))


def _read(path: Path, out: Path):
    text = path.read_bytes()
    if path.suffix == ".json":
        return _strip(json.loads(text), out)
    if path.suffix == ".jsonl":
        return [_strip(json.loads(line), out) for line in text.decode().splitlines() if line.strip()]
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text.decode())))
        keep = [i for i, name in enumerate(rows[0]) if not is_wall_clock(name)] if rows else []
        return [[row[i] for i in keep if i < len(row)] for row in rows]
    return text


def _files(out: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(out)): p
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part in SKIP for part in p.relative_to(out).parts)
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sigterm_and_resume_leave_every_file_equal(tmp_path, command):
    whole, split = tmp_path / "whole", tmp_path / "split"
    SETUP[command] = _setup(command, tmp_path)
    done = subprocess.run(_cli(command, whole), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    proc = subprocess.Popen(
        _cli(command, split), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and _logged(split) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 143, f"expected a stop by SIGTERM (143), got {proc.returncode}:\n{output[-3000:]}"
    assert "stopped by SIGTERM" in output and "--resume" in output, output[-2000:]
    stopped = _logged(split)

    resumed = subprocess.run(_cli(command, split, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {UNIT.get(command, 'generation')} {stopped}" in " ".join(resumed.stdout.split()), (
        resumed.stdout[-2000:]
    )

    want, got = _files(whole), _files(split)
    assert sorted(got) == sorted(want)
    assert {"result.json", "metrics/metrics.jsonl", "metrics/metrics.csv"} <= set(want)
    for name in want:
        assert _read(got[name], split) == _read(want[name], whole), f"{command}: {name} differs after the resume"
    record = json.loads((split / "result.json").read_text())
    assert record["command"] == command and record["stopped_by"] == "generations"
    # every file the command wrote is named in result.json (and so in its closing lines)
    named = {Path(path).parts[0] for path in record["files"].values()} | {"result.json", "metrics", *SKIP}
    assert {Path(name).parts[0] for name in want} <= named, (command, sorted(want), record["files"])


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    """Two `eggroll rl --out same`: the second exits 2 with one line; the first finishes untouched."""
    from eggroll.run.lock import LOCK_NAME

    out = tmp_path / "same"
    long = _cli("rl", out, "--generations", "1000000")  # still running when the second one starts
    first = subprocess.Popen(long, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while first.poll() is None and not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.run(_cli("rl", out), env=_env(), capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first run ended before the second one was checked"
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=600)[0]
    assert first.returncode == 143, output[-3000:]
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is in use by another run (`eggroll rl`, pid" in lines[0], second.stderr
    rows = [json.loads(line) for line in (out / "metrics" / "metrics.jsonl").read_text().splitlines()]
    generations = [r["generation"] for r in rows]
    assert generations == list(range(len(generations))) and len(generations) > 2  # one run's rows, in order
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["rl"])  # lm: tests/test_apps_lm.py::test_train_resume_and_sample
def test_a_damaged_checkpoint_is_named_and_the_run_continues_from_the_newest_good_one(tmp_path, command):
    """Issue 13, item 1: bytes overwritten inside the newest step's data (as `dd conv=notrunc` does).

    ``--resume`` must refuse it in one line (exit 2) naming the damaged step and the newest step that
    verifies, delete nothing, and ``--resume --resume-from <that step>`` must finish the run with every
    file equal to the undamaged run's.
    """
    import shutil

    from test_run_loop import _damage, _steps

    out = tmp_path / "run"
    done = subprocess.run(_cli(command, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    snapshot = tmp_path / "snapshot"
    shutil.copytree(out, snapshot, ignore=shutil.ignore_patterns(*SKIP))
    ckpt = out / "checkpoints"
    steps = _steps(ckpt)
    newest, good = steps[-1], steps[-2]
    damaged = _damage(ckpt / str(newest))

    refused = subprocess.run(_cli(command, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert f"step {newest} in {ckpt} is damaged: {damaged.relative_to(ckpt / str(newest))}" in lines[0]
    assert f"--resume-from {good}" in lines[0]
    assert _steps(ckpt) == steps

    again = _cli(command, out, "--resume", "--resume-from", str(good))
    resumed = subprocess.run(again, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {UNIT.get(command, 'generation')} {good}" in " ".join(resumed.stdout.split())
    assert _steps(out / "checkpoints.set-aside") == [newest]
    want, got = _files(snapshot), _files(out)
    assert sorted(got) == sorted(want)
    for name in want:
        assert _read(got[name], out) == _read(want[name], out), f"{command}: {name} differs after the fallback"
