"""``eggroll bbob --suite``: the runner on bbob-noisy, bbob-largescale and bbob-mixint, checked through cocopp.

Each run is tiny (one or two problems, a few hundred evaluations) but real: evosax's SNES on the suite's
problems, COCO's data written by cocoex's observer, read back by cocopp, whose runtimes must equal the CSV's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_apps_bbob import _assert_runtimes_equal_cocopp
from typer.testing import CliRunner

from eggroll.commands.bbob import app
from eggroll.problems.bbob import runner


@pytest.mark.parametrize(
    ("suite", "functions", "dims"),
    [("bbob-noisy", "101,125", "2"), ("bbob-largescale", "1,14", "20"), ("bbob-mixint", "3,21", "5")],
)
def test_cli_suite_writes_coco_data_cocopp_reads(tmp_path: Path, suite: str, functions: str, dims: str) -> None:
    out = tmp_path / suite
    args = ["--suite", suite, "--strategies", "evosax:SNES", "--functions", functions, "--dims", dims]
    args += ["--instances", "1", "--budget", "30", "--coco", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    info = sorted((out / "coco" / "SNES").glob("*.info"))
    assert len(info) == 2 and all(f"suite = '{suite}'" in p.read_text() for p in info), [p.read_text() for p in info]
    assert json.loads((out / "result.json").read_text())["settings"]["suite"] == suite
    result = _result_from_csv(out, suite, dims)
    _assert_runtimes_equal_cocopp(result, out)


def _result_from_csv(out: Path, suite: str, dims: str) -> runner.BenchmarkResult:
    """The run's hits and records, as ``_assert_runtimes_equal_cocopp`` reads them, from the files it wrote."""
    import csv

    import numpy as np

    with (out / "bbob_results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    npz = np.load(out / "bbob_runtimes.npz")
    d = int(dims)
    problems = [(int(r["function"]), int(r["instance"])) for r in rows]
    return runner.BenchmarkResult(
        records=rows, hits={("SNES", d): npz[f"hits__SNES__{d}"]}, problems={d: problems}, budgets={d: 30 * d}
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "nope"], "unknown --suite 'nope'"),
        (["--suite", "bbob-noisy", "--functions", "1"], "the noisy suite has functions 101..130"),
        (["--functions", "101"], "Unknown BBOB function id 101"),
        (["--suite", "bbob-largescale", "--dims", "10", "--coco"], "bbob-largescale suite's dimensions"),
        (["--suite", "bbob-largescale", "--dims", "1280"], "Unsupported bbob-largescale dimension 1280"),
        (["--suite", "bbob-mixint", "--dims", "12"], "Unsupported bbob-mixint dimension 12"),
    ],
)
def test_cli_suite_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, [*args, "--strategies", "cma_es", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
