"""`eggroll bbob` stopped by a real SIGTERM and resumed: identical outputs, metrics rows once, clear refusals.

The interrupted leg is a real subprocess running ``python -m eggroll.cli bbob``
(through :func:`runpy.run_module`, the way ``-m`` runs it) with one change: each
metrics row is delayed by a quarter second, so that the run is still going when
the test sends SIGTERM (undelayed, a chunk of this tiny benchmark takes a
millisecond). The delay only slows the process; it changes no value.

The benchmark: CMA-ES then OpenAI-ES on f1 and f21 (two instances) in 2-D with
a budget of 200 x D evaluations in chunks of 5 generations (14 chunks for
CMA-ES, 7 for OpenAI-ES); the SIGTERM arrives during the OpenAI-ES run, so the
CMA-ES run is finished (and must not be recomputed) and OpenAI-ES is resumed
from the middle of its scan.
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

import numpy as np
import pytest
from typer.testing import CliRunner

from eggroll.commands.bbob import app
from eggroll.run.loop import is_wall_clock, without_wall_clock

ARGS = ["--strategies", "cma_es,open_es", "--functions", "1,21", "--dims", "2", "--instances", "1-2"]
ARGS += ["--budget", "200", "--chunk-generations", "5", "--quiet", "--checkpoint-every", "3"]
CHUNKS = 14 + 7  # CMA-ES: population 6, 66 generations; OpenAI-ES: population 12, 33 generations

SLOW_CLI = """
import runpy, sys, time
import eggroll.logging as logging

log = logging.MetricsLogger.log
logging.MetricsLogger.log = lambda self, *a, **k: (time.sleep(0.25), log(self, *a, **k))[1]
sys.argv = ["eggroll", *sys.argv[1:]]
runpy.run_module("eggroll.cli", run_name="__main__")
"""


def _text(result) -> str:
    return " ".join(result.output.split())


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def legs(tmp_path_factory):
    """A run killed by SIGTERM during its second (strategy, dim) run, then resumed; and an uninterrupted run."""
    root = tmp_path_factory.mktemp("bbob_resume")
    split, whole = root / "split", root / "whole"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "bbob", *ARGS, "--out", str(split)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = split / "metrics" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    # wait for the first row of the second run: the first run is finished and checkpointed
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and '"run": 1,' in metrics.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stopped_output, _ = proc.communicate(timeout=120)
    stopped_rows = _rows(split)
    steps_at_stop = sorted(int(p.name) for p in (split / "checkpoints").iterdir() if p.name.isdigit())
    tables_at_stop = (split / "bbob_results.csv").exists()

    fresh = CliRunner().invoke(app, [*ARGS, "--out", str(split)])  # forgot --resume
    other = CliRunner().invoke(app, [*ARGS, "--out", str(split), "--resume", "--functions", "1,22", "--seed", "3"])
    resumed = CliRunner().invoke(app, [*ARGS, "--out", str(split), "--resume"])
    reference = CliRunner().invoke(app, [*ARGS, "--out", str(whole)])
    return {
        "split": split,
        "whole": whole,
        "returncode": proc.returncode,
        "stopped_output": " ".join(stopped_output.split()),
        "stopped_rows": stopped_rows,
        "steps_at_stop": steps_at_stop,
        "tables_at_stop": tables_at_stop,
        "fresh": fresh,
        "other": other,
        "resumed": resumed,
        "reference": reference,
    }


def test_sigterm_saves_and_exits_143_with_a_resume_hint(legs) -> None:
    out = legs["stopped_output"]
    assert legs["returncode"] == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "plus --resume" in out, out[-3000:]
    stopped = legs["stopped_rows"][-1]["generation"]
    assert 14 < stopped < CHUNKS  # inside the OpenAI-ES run
    assert stopped in legs["steps_at_stop"]  # the chunk under way was finished and saved
    assert not legs["tables_at_stop"]  # no partial tables


def test_resume_gives_results_identical_to_an_uninterrupted_run(legs) -> None:
    assert legs["reference"].exit_code == 0, legs["reference"].output
    assert legs["resumed"].exit_code == 0, legs["resumed"].output
    stopped = legs["stopped_rows"][-1]["generation"]
    assert f"resumed from chunk {stopped}" in _text(legs["resumed"])
    split, whole = legs["split"], legs["whole"]
    csv = (split / "bbob_results.csv").read_bytes()
    assert csv == (whole / "bbob_results.csv").read_bytes()
    assert csv.count(b"\n") == 1 + 2 * 2 * 2  # header + strategies x functions x instances
    a, b = np.load(split / "bbob_runtimes.npz"), np.load(whole / "bbob_runtimes.npz")
    assert sorted(a.files) == sorted(b.files) and "hits__open_es__2" in a.files
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])
    assert (a["hits__cma_es__2"] >= 0).any()  # something was reached: the comparison is not of empty arrays


def test_metrics_rows_appear_once_and_finished_runs_are_not_recomputed(legs) -> None:
    rows = _rows(legs["split"])
    assert [r["generation"] for r in rows] == list(range(1, CHUNKS + 1))
    assert [r["run"] for r in rows] == [0] * 14 + [1] * 7
    assert [r["chunk"] for r in rows] == list(range(1, 15)) + list(range(1, 8))
    assert rows[-1]["evaluations"] == 33 * 12 and rows[13]["evaluations"] == 66 * 6
    assert all(r["evals_per_s"] > 0 and 0 <= r["targets_reached"] <= 1 for r in rows)
    # the rows up to the checkpoint are those of the first leg, timings included: nothing before was rerun
    stopped = legs["stopped_rows"][-1]["generation"]
    assert rows[:stopped] == legs["stopped_rows"][:stopped]
    # the same metrics values as the uninterrupted run (timings aside)
    assert {"seconds", "evals_per_s", "generations_per_s"} <= {k for k in rows[0] if is_wall_clock(k)}
    ref = [without_wall_clock(r) for r in _rows(legs["whole"])]
    assert [without_wall_clock(r) for r in rows] == ref
    header = (legs["split"] / "metrics" / "metrics.csv").read_text().splitlines()
    assert len(header) == 1 + CHUNKS and header[0].startswith("generation,run,strategy_index,dimension")


def test_fresh_run_into_a_used_folder_and_other_settings_are_refused(legs) -> None:
    fresh = legs["fresh"]
    assert fresh.exit_code == 2 and "already holds checkpoints" in _text(fresh)
    assert "pass --resume" in _text(fresh) and "another --out" in _text(fresh)
    other = _text(legs["other"])
    assert legs["other"].exit_code == 2
    assert "functions: [1, 21] in the checkpoint, [1, 22] now" in other and "seed: 0 in the checkpoint, 3 now" in other


def test_every_file_equals_the_uninterrupted_runs(legs) -> None:
    """Every file in --out (checkpoints and TensorBoard events aside) equals the uninterrupted run's, timings aside."""
    split, whole = legs["split"], legs["whole"]

    def files(root: Path) -> list[str]:
        return sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "checkpoints" not in p.relative_to(root).parts and "tfevents" not in p.name
        )

    names = files(split)
    assert names == files(whole)
    assert {"bbob_results.csv", "bbob_results.md", "bbob_runtimes.npz", "bbob_ecdf.png", "result.json"} <= set(names)
    for name in names:
        a, b = (split / name).read_bytes(), (whole / name).read_bytes()
        if name.endswith(".json"):
            assert without_wall_clock(json.loads(a)) == without_wall_clock(json.loads(b)), name
        elif name.endswith(".jsonl"):
            rows = [[without_wall_clock(json.loads(line)) for line in x.splitlines()] for x in (a, b)]
            assert rows[0] == rows[1], name
        elif name.endswith("metrics.csv"):
            tables = [list(csv.DictReader(io.StringIO(x.decode()))) for x in (a, b)]
            assert [without_wall_clock(r) for r in tables[0]] == [without_wall_clock(r) for r in tables[1]], name
        else:
            assert a == b, name
    record = json.loads((split / "result.json").read_text())
    assert record["command"] == "bbob" and record["runs_finished"] == record["runs"] == 2
    assert record["files"]["csv"] == "bbob_results.csv" and set(record["run_seconds"]) == {"cma_es 2-D", "open_es 2-D"}


def test_resume_refusals_without_running(tmp_path: Path) -> None:
    nothing = CliRunner().invoke(app, [*ARGS, "--out", str(tmp_path / "none"), "--resume"])
    assert nothing.exit_code == 2 and "No finished checkpoint" in _text(nothing)
    coco = CliRunner().invoke(app, [*ARGS, "--out", str(tmp_path / "c"), "--resume", "--coco"])
    assert coco.exit_code == 2 and "--coco cannot be combined with --resume" in _text(coco)
