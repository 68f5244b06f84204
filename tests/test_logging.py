"""Metrics logs: JSONL, CSV and TensorBoard (real tensorboardX event files, read back here)."""

from __future__ import annotations

import csv
import math
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eggroll
from eggroll import run
from eggroll.logging import MetricsLogger, read_jsonl, scalar_metrics


def read_tensorboard(directory) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every tensorboardX event file under ``directory`` (TFRecord framing parsed by hand)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(directory.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {directory}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            record = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_jsonl_csv_and_tensorboard_hold_the_same_rows(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for g in range(3):
            log.log(
                g,
                {
                    "mean_fitness": jnp.float32(1.0 / (g + 1)),
                    "num_nonfinite": jnp.int32(g),
                    "best_solution": {"w": jnp.ones((3, 3))},  # not a scalar: skipped
                    "best_fitness": np.inf if g == 0 else 0.5,
                },
            )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert rows[0]["best_fitness"] == "inf" and rows[1]["best_fitness"] == 0.5
    assert rows[2]["num_nonfinite"] == 2 and "best_solution" not in rows[0]
    assert rows[1]["mean_fitness"] == pytest.approx(0.5)
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["generation", "mean_fitness", "num_nonfinite", "best_fitness"]
    assert [float(r["mean_fitness"]) for r in table] == pytest.approx([1.0, 0.5, 1 / 3])
    tb = read_tensorboard(tmp_path / "tensorboard")
    assert [s for s, _ in tb["mean_fitness"]] == [0, 1, 2]
    assert [v for _, v in tb["mean_fitness"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [s for s, _ in tb["best_fitness"]] == [1, 2]  # the infinite value is left out of TensorBoard


def test_truncate_drops_rows_past_a_resume_point_and_appending_continues(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for g in range(5):
            log.log(g, {"x": float(g)})
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.truncate(3)
        log.log(3, {"x": 30.0})
    assert [(r["generation"], r["x"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["generation", "x"] and [r[0] for r in table[1:]] == ["0", "1", "2", "3"]


def test_truncate_after_a_kill_mid_row_drops_the_cut_row_and_names_a_damaged_one(tmp_path):
    """A process killed while writing a row (kill -9, a preempted machine) leaves it cut short, without its newline;
    the resume dropped nothing and failed on it with a bare JSON error. Now the cut row goes (it is past every
    checkpoint: rows are written before their checkpoint), even one cut inside a number ("16" of 160); a row damaged
    elsewhere is named, with what to do."""
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for g in range(5):
            log.log(g, {"x": float(g)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"generation": 160, "x": 1')
    with open(tmp_path / "metrics.csv", "a", newline="") as f:
        f.write("1")  # the row of generation 160, cut after one character: it would read as generation 1
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.truncate(3)
        log.log(3, {"x": 30.0})
    assert [r["generation"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert [r[0] for r in table[1:]] == ["0", "1", "2", "3"] and table[-1] == ["3", "30.0"]

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]  # damaged in the middle: not a cut last row
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with MetricsLogger(tmp_path, tensorboard=False) as log, pytest.raises(ValueError, match=r"line 2 is not a JSON"):
        log.truncate(3)


def test_truncate_skips_blank_csv_lines_and_names_a_cell_that_is_not_a_number(tmp_path):
    """A CSV saved again by an editor or a spreadsheet may gain blank lines; resume failed on them with a bare
    IndexError, and on a hand-edited generation cell with a bare ValueError."""
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for g in range(5):
            log.log(g, {"x": float(g)})
    text = (tmp_path / "metrics.csv").read_text()
    (tmp_path / "metrics.csv").write_text(text.replace("\n2,", "\n\n2,") + "\n\n")
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.truncate(3)
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert list(csv.reader(f)) == [["generation", "x"], ["0", "0.0"], ["1", "1.0"], ["2", "2.0"]]
    (tmp_path / "metrics.csv").write_text("generation,x\n0,0.0\nabc,1.0\n")
    with MetricsLogger(tmp_path, tensorboard=False) as log, pytest.raises(ValueError, match=r"line 3 is not a metrics"):
        log.truncate(1)


def test_truncate_purges_tensorboard_events_past_the_resume_point(tmp_path):
    """A resumed log hides the first run's TensorBoard events from the resume step on (TensorBoard's purge rule)."""
    from tensorboardX.proto import event_pb2

    with MetricsLogger(tmp_path) as log:
        for g in range(5):
            log.log(g, {"x": float(g)})
    with MetricsLogger(tmp_path) as log:
        log.truncate(3)
        log.log(3, {"x": 30.0})
    files = sorted((tmp_path / "tensorboard").rglob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime_ns)
    assert len(files) >= 2  # one file per writer: nothing of the first run is overwritten
    seen: dict[int, float] = {}
    purges = []
    for path in files:  # replay the files in write order, as TensorBoard does
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                purges.append(event.step)
                seen = {s: v for s, v in seen.items() if s < event.step}
            for v in event.summary.value:
                seen[event.step] = v.simple_value
    assert purges == [3]
    assert seen == {0: 0.0, 1: 1.0, 2: 2.0, 3: 30.0}


def test_new_columns_warn_and_disabled_logger_writes_nothing(tmp_path):
    with MetricsLogger(tmp_path / "a", tensorboard=False) as log:
        log.log(0, {"x": 1.0})
        with pytest.warns(UserWarning, match=r"\['y'\] appeared after the CSV header"):
            log.log(1, {"x": 2.0, "y": 3.0})
    assert read_jsonl(tmp_path / "a" / "metrics.jsonl")[1]["y"] == 3.0
    with MetricsLogger(tmp_path / "b", enabled=False) as log:
        assert log.log(0, {"x": 1.0}) == {"generation": 0, "x": 1.0}
    assert not (tmp_path / "b").exists()


def test_tensorboard_true_without_tensorboardx_is_a_clear_error(tmp_path, monkeypatch):
    # tensorboardX IS installed here; hiding it from the import system is the only way to test the message.
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        MetricsLogger(tmp_path, tensorboard=True)
    with MetricsLogger(tmp_path, tensorboard=None) as log:  # auto: quietly JSONL + CSV only
        log.log(0, {"x": 1.0})
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch where it is installed (it is, for the LLM reference tests): 1.2-1.5 s at every
    command's start. The logger writes events without it, and torch still imports normally afterwards."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        from eggroll.run.logging import MetricsLogger
        with MetricsLogger({str(tmp_path)!r}, tensorboard=True) as log:
            log.log(1, {{"x": 2.0}})
        assert "torch" not in sys.modules, "tensorboardX imported torch"
        if importlib.util.find_spec("torch") is not None:
            import torch
            assert float(torch.ones(3).sum()) == 3.0
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_scalar_metrics_keeps_only_scalars():
    got = scalar_metrics({"a": jnp.float32(2.0), "b": jnp.ones(3), "c": 4, "d": jnp.bool_(True), "e": "text"})
    assert got == {"a": 2.0, "c": 4, "d": 1}


def test_train_logs_generation_fitness_sigma_update_norm_and_throughput(tmp_path):
    es = eggroll.open_es(population_size=8, solution=jnp.zeros(3), optimizer=optax.adam(0.1))
    seen = []
    result = run.train(
        es,
        lambda x, key: jnp.sum((x - 1.0) ** 2),
        jnp.zeros(3),
        key=jax.random.key(0),
        num_generations=6,
        log_dir=tmp_path,
        log_every=2,
        progress=True,  # rich progress on a non-terminal: must not break anything
        callback=lambda g, row: seen.append(g),
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["generation"] for r in rows] == [2, 4, 6] == seen
    for key in (
        "best_fitness",
        "mean_fitness",
        "std_fitness",
        "sigma",
        "update_norm",
        "generations_per_s",
        "evaluations_per_s",
    ):
        assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in rows), key
    assert rows[-1]["evaluations_per_s"] == pytest.approx(8 * rows[-1]["generations_per_s"])
    assert rows[-1]["mean_fitness"] < rows[0]["mean_fitness"]  # it learns
    assert rows == result.history
    assert set(read_tensorboard(tmp_path / "tensorboard")) >= {"mean_fitness", "sigma", "update_norm"}
