"""`eggroll lm` end to end: train with real orbax checkpoints (eggroll.checkpoint), resume, plot, sample."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from eggroll.checkpoint import CheckpointError
from eggroll.commands.lm import app, load_checkpoint
from eggroll.problems import text

TINY = [
    "--width",
    "16",
    "--depth",
    "1",
    "--population",
    "32",
    "--chunk",
    "16",
    "--valid-every",
    "3",
    "--generations",
    "8",
    "--sample-length",
    "0",
]


def test_train_resume_and_sample(tmp_path: Path):
    runner = CliRunner()
    ckpt = tmp_path / "run"
    first = runner.invoke(app, [*TINY, "--stop-at", "6", "--ckpt-every", "4", "--ckpt-dir", str(ckpt)])
    assert first.exit_code == 0, first.output
    assert "unigram" in first.output and "bigram" in first.output and "done generation 6" in first.output
    assert (ckpt / "learning_curve.png").stat().st_size > 10_000
    meta, tree = load_checkpoint(ckpt)
    assert meta["config"]["width"] == 16 and tree["params"]["head"].dtype == np.int8
    # scored at the start, every 3 generations, and at each checkpoint (4)
    assert [r["generation"] for r in meta["history"] if "valid_bpb" in r] == [0, 3, 4, 6]

    # a second run into the same directory must ask for --resume
    again = runner.invoke(app, [*TINY, "--ckpt-dir", str(ckpt)])
    assert again.exit_code == 2 and "--resume" in again.output

    # a resume that changes a setting of the run is refused, naming the setting
    other = runner.invoke(app, ["--resume", "--width", "32", "--rank", "1", "--ckpt-dir", str(ckpt)])
    assert other.exit_code == 2 and "--width 32 (checkpoint: 16)" in other.output and "--rank" not in other.output

    # resume on 2 devices (settings from the checkpoint; --generations given explicitly, as before)
    resumed = runner.invoke(
        app, ["--generations", "8", "--resume", "--devices", "2", "--ckpt-dir", str(ckpt), "--sample-length", "0"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "2 devices" in " ".join(resumed.output.split())  # rich wraps lines
    meta2, tree2 = load_checkpoint(ckpt)
    gens = [r["generation"] for r in meta2["history"] if "train_bpb" in r]
    assert gens == list(range(1, 9))  # continued at 7, not restarted
    assert not np.array_equal(np.asarray(tree2["params"]["head"]), np.asarray(tree["params"]["head"]))

    # bit for bit: 6 generations + a resume on 2 devices == 8 generations in one go on one device
    straight = tmp_path / "straight"
    whole = runner.invoke(app, [*TINY, "--ckpt-every", "100", "--ckpt-dir", str(straight)])
    assert whole.exit_code == 0, whole.output
    _, tree3 = load_checkpoint(straight)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, tree3), jax.tree.map(np.asarray, tree2))
    # the Python API checks the settings too (rank is not visible in the array shapes)
    other_task = text.make_task(text.LMConfig(**{**meta2["config"], "rank": 2}), *text.split_bytes(text.load_corpus()))
    with pytest.raises(CheckpointError, match=r"rank 2 \(checkpoint: 1\)"):
        load_checkpoint(straight, other_task)

    out = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--prompt", "Hello", "--length", "20", "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("Hello")
    missing = runner.invoke(app, ["sample", "--ckpt", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output

    # a corrupt newest step: a clear error that names what to delete (sampling and resuming)
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)  # steps 4, 6 and 8
    for f in (broken / "8" / "items").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    for cmd in (["sample", "--ckpt", str(broken)], ["--resume", "--ckpt-dir", str(broken)]):
        out = runner.invoke(app, cmd)
        assert (
            out.exit_code == 2
            and "corrupt" in out.output
            and f"delete {broken / '8'} to resume from step 6" in out.output
        )
    assert "Traceback" not in out.output


def test_bad_options_and_old_checkpoints_give_clear_errors(tmp_path: Path):
    import orbax.checkpoint as ocp

    runner = CliRunner()
    bad = runner.invoke(app, [*TINY, "--devices", "3", "--ckpt-dir", str(tmp_path / "a")])
    assert bad.exit_code == 2 and "cannot be split over 3 devices" in bad.output
    bad = runner.invoke(app, [*TINY, "--devices", "many", "--ckpt-dir", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--devices takes" in bad.output
    bad = runner.invoke(app, ["--resume", "--ckpt-dir", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    bad = runner.invoke(app, [*TINY, "--ckpt-dir", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "not empty" in bad.output and "notes.txt" in bad.output

    # a checkpoint written by the previous `eggroll lm` (hand-written orbax layout: items "state" and "meta")
    old = tmp_path / "old"
    with ocp.CheckpointManager(old.absolute(), options=ocp.CheckpointManagerOptions(create=True)) as manager:
        tree = {"params": {"head": np.zeros((256, 16), np.int8)}, "generation": np.int32(4)}
        meta = {"config": {"width": 16, "depth": 1}, "history": []}
        manager.save(
            4, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True
        )
    for cmd in (["sample", "--ckpt", str(old)], ["--resume", "--ckpt-dir", str(old)]):
        out = runner.invoke(app, cmd)
        assert out.exit_code == 2 and "older `eggroll lm`" in out.output and "another --ckpt-dir" in out.output, (
            out.output
        )


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path: Path):
    """A real SIGTERM to a running `eggroll lm`: it finishes the generation, saves, exits 143; --resume goes on.

    The periodic checkpoints are far apart (--ckpt-every 1000), so the checkpoint must come from the signal.
    """
    import signal
    import subprocess
    import sys
    import time

    ckpt = tmp_path / "run"
    metrics = ckpt / "metrics" / "metrics.jsonl"
    args = [a if a != "8" else "500" for a in TINY]  # a run far longer than the test waits
    proc = subprocess.Popen(
        [sys.executable, "-m", "eggroll.cli", "lm", *args, "--ckpt-every", "1000", "--ckpt-dir", str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    assert not any(p.name.isdigit() for p in ckpt.iterdir())  # no periodic checkpoint yet
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM" in out and "--resume" in out
    meta, _ = load_checkpoint(ckpt)
    stopped = max(r["generation"] for r in meta["history"])
    assert 1 <= stopped < 500

    resumed = CliRunner().invoke(
        app, ["--stop-at", str(stopped + 2), "--resume", "--ckpt-dir", str(ckpt), "--sample-length", "0"]
    )
    assert resumed.exit_code == 0, resumed.output
    meta2, _ = load_checkpoint(ckpt)
    assert [r["generation"] for r in meta2["history"] if "train_bpb" in r] == list(range(1, stopped + 3))
    import json

    rows = [json.loads(line) for line in (ckpt / "metrics" / "metrics.jsonl").read_text().splitlines()]
    trained = [r["generation"] for r in rows if r["train_bpb"] is not None]
    assert trained == list(range(1, stopped + 3))  # eggroll.logging: each generation once across the stop
    assert rows[0]["generation"] == 0 and rows[0]["valid_bpb"] > 0 and rows[0]["train_bpb"] is None
