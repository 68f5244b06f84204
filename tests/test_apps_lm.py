"""`eggroll lm` end to end through the shared run loop: train with real orbax checkpoints, resume, plot, sample."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from eggroll.commands.lm import app, load_checkpoint
from eggroll.problems import text
from eggroll.run.checkpoint import Checkpointer
from eggroll.run.loop import is_wall_clock

TINY = [
    "--width",
    "16",
    "--depth",
    "1",
    "--population",
    "32",
    "--chunk",
    "16",
    "--eval-every",
    "3",
    "--generations",
    "8",
    "--sample-length",
    "0",
]


def test_train_resume_and_sample(tmp_path: Path):
    runner = CliRunner()
    ckpt = tmp_path / "run"
    first = runner.invoke(app, [*TINY, "--stop-at", "6", "--checkpoint-every", "4", "--out", str(ckpt)])
    assert first.exit_code == 0, first.output
    assert "unigram" in first.output and "bigram" in first.output and "done generation 6" in first.output
    assert (ckpt / "learning_curve.png").stat().st_size > 10_000
    assert sorted(p.name for p in (ckpt / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "6"]
    assert (ckpt / "metrics" / "metrics.csv").is_file() and (ckpt / "result.json").is_file()
    meta, tree = load_checkpoint(ckpt)
    assert meta["config"]["width"] == 16 and tree["params"]["head"].dtype == np.int8
    # scored at the start and every 3 generations; a stop (here --stop-at) adds no evaluation, so a stopped
    # and resumed run logs exactly what an uninterrupted one does
    assert [r["generation"] for r in meta["history"] if "valid_bpb" in r] == [0, 3, 6]

    # a second run into the same directory must ask for --resume
    again = runner.invoke(app, [*TINY, "--out", str(ckpt)])
    assert again.exit_code == 2 and "--resume" in again.output

    # a resume that changes a setting of the run is refused, naming the setting
    other = runner.invoke(app, ["--resume", "--width", "32", "--rank", "1", "--out", str(ckpt)])
    assert other.exit_code == 2 and "width: 16 in the checkpoint, 32 now" in other.output, other.output
    assert "rank:" not in other.output
    # ... and so is another corpus (checked by SHA-256)
    corpus = tmp_path / "other.txt"
    corpus.write_bytes(b"another corpus, " * 512)
    other = runner.invoke(app, ["--resume", "--corpus", str(corpus), "--out", str(ckpt)])
    assert other.exit_code == 2 and "another corpus" in other.output and "Traceback" not in other.output

    # resume on 2 devices (settings from the checkpoint; --generations given explicitly, as before), through the
    # old option names (hidden aliases of --out / --checkpoint-every)
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
    whole = runner.invoke(app, [*TINY, "--checkpoint-every", "100", "--out", str(straight)])
    assert whole.exit_code == 0, whole.output
    meta3, tree3 = load_checkpoint(straight)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, tree3), jax.tree.map(np.asarray, tree2))
    # ... and the same log: rows, evaluations, moved weights (the mean fitness may differ in the last float bit
    # across device counts: summation order)
    for a, b in zip(meta2["history"], meta3["history"], strict=True):
        assert {k for k in a if not is_wall_clock(k)} == {k for k in b if not is_wall_clock(k)}
        assert a["generation"] == b["generation"] and a.get("num_moved") == b.get("num_moved")
        assert a.get("valid_bpb") == pytest.approx(b.get("valid_bpb"), rel=1e-6)
    result = json.loads((ckpt / "result.json").read_text())
    assert result["command"] == "lm" and result["generation"] == 8 and result["settings"]["width"] == 16
    assert result["files"] == {"plot": "learning_curve.png"}  # relative to --out
    # the Python API checks the settings too (rank is not visible in the array shapes)
    other_task = text.make_task(text.LMConfig(**{**meta2["config"], "rank": 2}), *text.split_bytes(text.load_corpus()))
    with pytest.raises(ValueError, match=r"rank: 1 in the checkpoint, 2 now"):
        load_checkpoint(straight, other_task)

    for flag in ("--out", "--ckpt"):  # --ckpt: the old name
        out = runner.invoke(app, ["sample", flag, str(ckpt), "--prompt", "Hello", "--length", "20", "--seed", "3"])
        assert out.exit_code == 0, out.output
        assert out.output.startswith("Hello")
    missing = runner.invoke(app, ["sample", "--out", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output

    # a corrupt newest step: a clear error that names it and the step to continue from (sampling and resuming)
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)  # steps 4, 6 and 8
    for f in (broken / "checkpoints" / "8" / "items").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    for cmd in (["sample", "--out", str(broken)], ["--resume", "--out", str(broken)]):
        out = runner.invoke(app, cmd)
        assert (
            out.exit_code == 2
            and f"step 8 in {broken / 'checkpoints'} is damaged" in " ".join(out.output.split())
            and "--resume-from 6" in out.output
            and "delete" not in out.output
        ), out.output
    assert "Traceback" not in out.output


def test_bad_options_and_old_checkpoints_give_clear_errors(tmp_path: Path):
    import orbax.checkpoint as ocp

    runner = CliRunner()
    bad = runner.invoke(app, [*TINY, "--devices", "3", "--out", str(tmp_path / "a")])
    assert bad.exit_code == 2 and "cannot be split over 3 devices" in bad.output
    bad = runner.invoke(app, [*TINY, "--devices", "many", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--devices takes" in bad.output
    bad = runner.invoke(app, ["--resume", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    bad = runner.invoke(app, [*TINY, "--out", str(tmp_path / "e"), "--ckpt-dir", str(tmp_path / "f")])
    assert bad.exit_code == 2 and "--ckpt-dir is the old name of --out" in bad.output
    bad = runner.invoke(app, [*TINY, "--eval-every", "0", "--out", str(tmp_path / "g")])
    assert bad.exit_code == 2 and "--eval-every must be a whole number >= 1" in bad.output
    with pytest.MonkeyPatch.context() as mp:  # a multi-process start (eggroll --coordinator ...) is refused
        mp.setattr(jax, "process_count", lambda: 2)
        bad = runner.invoke(app, [*TINY, "--out", str(tmp_path / "h")])
    assert bad.exit_code == 2 and "one host" in bad.output and "--coordinator" in bad.output
    assert not any((tmp_path / n).exists() for n in "abefgh")  # refused before anything is written
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    bad = runner.invoke(app, [*TINY, "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "not empty" in bad.output and "notes.txt" in bad.output

    # a run of an `eggroll lm` older than the one run loop (steps directly in its folder; here the hand-written
    # orbax layout of the first one): not read, with a message that says what to do
    old = tmp_path / "old"
    with ocp.CheckpointManager(old.absolute(), options=ocp.CheckpointManagerOptions(create=True)) as manager:
        tree = {"params": {"head": np.zeros((256, 16), np.int8)}, "generation": np.int32(4)}
        meta = {"config": {"width": 16, "depth": 1}, "history": []}
        manager.save(
            4, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True
        )
    for cmd in (["sample", "--out", str(old)], ["--resume", "--out", str(old)]):
        out = runner.invoke(app, cmd)
        assert out.exit_code == 2, out.output
        assert "older `eggroll lm`" in out.output and "previous release" in out.output, out.output
    out = runner.invoke(app, [*TINY, "--out", str(old)])
    assert out.exit_code == 2 and "not empty" in out.output and "new or empty --out" in out.output, out.output
    # the run of another command
    with Checkpointer(tmp_path / "rl" / "checkpoints", async_save=False) as ckpt:
        ckpt.save(1, {"x": np.zeros(2)}, {"generation": 1, "settings": {"env": "CartPole-v1"}, "extra": {}})
    for cmd in (["sample", "--out", str(tmp_path / "rl")], ["--resume", "--out", str(tmp_path / "rl")]):
        out = runner.invoke(app, cmd)
        assert out.exit_code == 2 and "not written by this `eggroll lm`" in out.output, out.output


def test_help_shows_the_common_options():
    out = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert out.exit_code == 0
    for name in ("--out", "--generations", "--population", "--seed", "--checkpoint-every", "--resume", "--devices",
                 "--time-budget", "--quiet", "--eval-every"):  # fmt: skip
        assert name in out.output, name
    for old in ("--ckpt-dir", "--ckpt-every", "--minutes", "--stop-at", "--valid-every"):
        assert old not in out.output, old


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path: Path):
    """A real SIGTERM to a running `eggroll lm`: it finishes the generation, saves, exits 143; --resume goes on.

    The periodic checkpoints are far apart (--checkpoint-every 1000), so the checkpoint must come from the signal.
    """
    import signal
    import subprocess
    import sys
    import time

    ckpt = tmp_path / "run"
    metrics = ckpt / "metrics" / "metrics.jsonl"
    args = [a if a != "8" else "500" for a in TINY]  # a run far longer than the test waits
    proc = subprocess.Popen(
        [sys.executable, "-m", "eggroll.cli", "lm", *args, "--checkpoint-every", "1000", "--out", str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    assert not any(p.name.isdigit() for p in (ckpt / "checkpoints").iterdir())  # no periodic checkpoint yet
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM" in out and "--resume" in out
    meta, _ = load_checkpoint(ckpt)
    stopped = max(r["generation"] for r in meta["history"])
    assert 1 <= stopped < 500

    resumed = CliRunner().invoke(
        app, ["--stop-at", str(stopped + 2), "--resume", "--out", str(ckpt), "--sample-length", "0"]
    )
    assert resumed.exit_code == 0, resumed.output
    meta2, _ = load_checkpoint(ckpt)
    assert [r["generation"] for r in meta2["history"] if "train_bpb" in r] == list(range(1, stopped + 3))
    rows = [json.loads(line) for line in (ckpt / "metrics" / "metrics.jsonl").read_text().splitlines()]
    trained = [r["generation"] for r in rows if r.get("train_bpb") is not None]
    assert trained == list(range(1, stopped + 3))  # eggroll.logging: each generation once across the stop
    assert rows[0]["generation"] == 0 and rows[0]["valid_bpb"] > 0 and rows[0].get("train_bpb") is None


def test_time_budget_bounds_the_whole_command(tmp_path: Path):
    """`eggroll lm --time-budget 20`, a real process timed from outside: it ends within the 20 s, its sample text,
    plot, files and exit included (the sampler compiles before the loop; 2 s are kept for the plot and exit)."""
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "eggroll.cli", "lm", *TINY, "--generations", "100000", "--time-budget", "20"]
    args += ["--sample-length", "40", "--out", str(tmp_path / "run")]
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["stopped_by"] == "time_budget" and record["generation"] > 1 and record["sample"].startswith("The ")
    assert elapsed < 20 + 0.5, f"the command took {elapsed:.1f} s of its 20 s budget"  # 0.5 s: process start-up
