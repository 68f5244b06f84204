"""`eggroll lm` end to end: train with real orbax checkpoints, resume, plot, sample."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from eggroll.commands.lm import app, load_checkpoint

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

    resumed = runner.invoke(app, ["--generations", "8", "--resume", "--ckpt-dir", str(ckpt), "--sample-length", "0"])
    assert resumed.exit_code == 0, resumed.output
    meta2, tree2 = load_checkpoint(ckpt)
    gens = [r["generation"] for r in meta2["history"] if "train_bpb" in r]
    assert gens == list(range(1, 9))  # continued at 7, not restarted
    assert not np.array_equal(np.asarray(tree2["params"]["head"]), np.asarray(tree["params"]["head"]))

    out = runner.invoke(app, ["sample", "--ckpt", str(ckpt), "--prompt", "Hello", "--length", "20", "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("Hello")
    missing = runner.invoke(app, ["sample", "--ckpt", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path: Path):
    """A real SIGTERM to a running `eggroll lm`: it finishes the generation, saves, exits 143; --resume goes on."""
    import signal
    import subprocess
    import sys
    import time

    ckpt = tmp_path / "run"
    args = [a if a != "8" else "500" for a in TINY]  # a run far longer than the test waits
    proc = subprocess.Popen(
        [sys.executable, "-m", "eggroll.cli", "lm", *args, "--ckpt-every", "1", "--ckpt-dir", str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir())):
        time.sleep(0.5)
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
