"""Every command's ``--help`` offers the common options with the same names, and the docs' loop example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eggroll.cli import app

COMMON = ["--out", "--generations", "--population", "--seed", "--checkpoint-every", "--resume", "--time-budget"]
COMMON += ["--quiet"]
DEVICES = {"rl", "lm", "finetune"}  # the commands whose population can be split over devices


@pytest.mark.parametrize("command", ["demo", "bbob", "rl", "lm", "finetune", "evollm"])
def test_help_shows_the_common_options(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    options = set(re.findall(r"--[a-z][a-z0-9-]*", text))
    missing = [o for o in COMMON if o not in options]
    assert not missing, f"eggroll {command} --help lacks {missing}"
    assert ("--devices" in options) == (command in DEVICES)
    for hidden in ("--ckpt-dir", "--ckpt-every", "--minutes", "--no-progress"):
        assert hidden not in options  # old names are hidden aliases


def test_run_loop_page_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = (Path(__file__).parents[1] / "docs" / "run-loop.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, re.S)
    namespace: dict = {}
    exec(compile(code, "docs/run-loop.md", "exec"), namespace)
    result = namespace["result"]
    assert result.stopped_by == "generations" and result.generation == 50
    assert (tmp_path / "runs" / "sphere" / "result.json").exists()
    assert result.history[-1]["best_fitness"] < 12.0  # below the start point's f = 3 * 2^2
