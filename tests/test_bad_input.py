"""Every command refuses bad option values in one line, with exit code 2, and leaves no file behind.

A fuzz-style table (issue 13, item 4): for each command, each option gets the values that are wrong
for it (0, negative, huge, NaN, inf, the wrong type, a missing file, an unwritable or impossible
folder). Each case runs the real CLI in this process (typer's runner, the same ``app`` the
``eggroll`` script runs) from an empty working folder, with ``--out`` inside it; the assertions:
exit code 2, exactly one line of output (``error: ...``, no traceback, no usage box), and the
working folder still empty (nothing created before the refusal).
"""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from eggroll.cli import app

BAD_INT = ["0", "-3", "abc", "2.5"]
BAD_FLOAT = ["nan", "inf", "-inf", "abc"]
BAD_COUNT = BAD_INT  # whole numbers >= 1
HUGE = "100000000000"
FILE_CASES = ["UNWRITABLE", "FILE/sub", "."]  # a file to write: in a folder it cannot write to, under a file, a folder

COMMON = {
    "--generations": BAD_COUNT,
    "--population": BAD_INT,
    "--checkpoint-every": BAD_COUNT,
    "--time-budget": ["0", "-1", *BAD_FLOAT],
    "--seed": ["abc", "1.5"],
}

TABLE: dict[str, dict[str, list[str]]] = {
    "demo": {**COMMON, "--population": [*BAD_INT, "1"], "--rank": BAD_COUNT},
    "rl": {
        **COMMON,
        "--population": [*BAD_INT, "7", HUGE, "100000000"],  # 1e8: refused from XLA's memory analysis
        "--sigma": ["0", "-0.1", *BAD_FLOAT],
        "--lr": ["0", *BAD_FLOAT],
        "--rank": BAD_COUNT,
        "--hidden": ["0", "a,b", "-4"],
        "--rollouts": BAD_COUNT,
        "--horizon": BAD_COUNT,
        "--eval-every": BAD_COUNT,
        "--eval-episodes": BAD_COUNT,
        "--target": ["nan", "inf"],
        "--env": ["NoSuchEnv-v0"],
        "--strategy": ["nope"],
        "--activation": ["nope"],
        "--devices": ["0", "-1", "abc", "1000"],
    },
    "bbob": {
        **{k: v for k, v in COMMON.items() if k != "--generations"},
        "--generations": BAD_COUNT,
        "--population": [*BAD_INT, "1"],
        "--budget": ["0", "-5", *BAD_FLOAT],
        "--functions": ["0", "25", "abc", "3-1"],
        "--dims": ["1", "41", "abc"],
        "--instances": ["0", "abc"],
        "--strategies": ["nope", "evosax:Nope"],
        "--x0": ["nope"],
        "--chunk-generations": BAD_COUNT,
    },
    "lm": {
        **COMMON,
        "--population": [*BAD_INT, "3", "200000000"],  # 2e8: more streams than the corpus holds
        "--width": [*BAD_COUNT, "32768"],  # a fan-in the int32 perturbation cannot hold
        "--depth": [*BAD_COUNT, "1000000"],  # more memory than this machine has
        "--mlp-ratio": BAD_COUNT,
        "--rank": BAD_COUNT,
        "--sigma-shift": ["-1", "abc", "99"],
        "--chunk": BAD_COUNT,
        "--group-pairs": BAD_COUNT,
        "--alpha-start": ["-0.5", "2", *BAD_FLOAT],
        "--alpha-end": ["-0.5", "2", *BAD_FLOAT],
        "--eval-every": BAD_COUNT,
        "--sample-length": ["-1", "abc"],
        "--corpus": ["/nonexistent/corpus.txt"],
        "--plot": FILE_CASES,
    },
    "finetune": {
        **COMMON,
        "--population": [*BAD_INT, "7", "12", "100000"],  # 12: 4 prompts, groups of 3 members; 1e5: beyond the memory
        "--sigma": ["-1", *BAD_FLOAT],
        "--lr": ["0", "-1", *BAD_FLOAT],
        "--lr-decay": ["-0.5", "2", *BAD_FLOAT],
        "--strategy": ["cma"],
        "--rank": BAD_COUNT,
        "--prompts": BAD_COUNT,
        "--group-size": ["0", "3", "abc"],
        "--max-new-tokens": BAD_COUNT,
        "--temperature": ["-1", *BAD_FLOAT],
        "--eval-every": BAD_COUNT,
        "--eval-prompts": BAD_COUNT,
        "--task": ["no-such-task"],
        "--model": ["/nonexistent/model.gguf", "NOT_A_MODEL"],
        "--devices": ["0", "abc", "1000"],
    },
    "evollm": {
        **COMMON,
        "--population": [*BAD_INT, "1"],
        "--dim": ["1", "41", "abc"],
        "--function": ["nope", "25", "0"],
        "--instance": ["0", "-1", "abc"],
        "--timeout": ["0", "-1", *BAD_FLOAT],
        "--block-size": BAD_COUNT,
        "--resolution": BAD_COUNT,
        "--archive-size": BAD_COUNT,
        "--temperature": ["-1", *BAD_FLOAT],
        "--api": ["foo"],
        "--base-url": ["ftp://x/v1", "not a url"],
        "--model-path": ["/nonexistent/model.gguf", "NOT_A_MODEL"],
        "--plot": FILE_CASES,  # refused before the model loads, not after the run when the plot is saved
        "--cache": FILE_CASES,
    },
}

EXTRA_CASES = [
    ("finetune", ["--task", "python", "--reward", "/nonexistent.py:f"]),
    ("finetune", ["--task", "python"]),  # no --reward
    ("evollm", ["--base-url", "http://127.0.0.1:9/v1", "--timeout", "nan"]),
]
OUT_CASES = ["UNWRITABLE", "FILE/sub"]


def _cases():
    for command, options in TABLE.items():
        for option, values in options.items():
            for value in values:
                yield pytest.param(command, [option, value], id=f"{command} {option} {value}")
        for out in OUT_CASES:
            yield pytest.param(command, ["--out", out], id=f"{command} --out {out}")
    for command, args in EXTRA_CASES:
        yield pytest.param(command, args, id=f"{command} {' '.join(args)}")


def _unwritable(tmp_path) -> str:
    """A folder this process cannot create files in (as root, chmod does not stop writes: use /sys)."""
    ro = tmp_path.parent / f"{tmp_path.name}-readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except OSError:
        return str(ro / "out")
    (ro / "probe").unlink()
    return "/sys/eggroll-test-out"  # read-only for root too (sysfs refuses new entries)


@pytest.mark.parametrize(("command", "args"), list(_cases()))
def test_bad_value_is_one_line_exit_2_and_leaves_nothing(command, args, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("not a model\n")
    (tmp_path / "FILE").write_text("a file where a folder is expected\n")
    args = [str(not_a_model) if a == "NOT_A_MODEL" else a for a in args]
    args = [_unwritable(tmp_path) if a == "UNWRITABLE" else str(tmp_path / a) if a == "FILE/sub" else a for a in args]
    if "--out" not in args:
        args += ["--out", str(work / "run")]
    result = CliRunner().invoke(app, [command, *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (args, result.exit_code, result.output[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output[-2000:])
    assert "Traceback" not in result.output
    assert sorted(os.listdir(work)) == [], (args, os.listdir(work))


@pytest.mark.parametrize(
    ("command", "args", "says"),
    [
        ("lm", ["--population", "6", "--group-pairs", "2"], "(--population)"),
        ("rl", ["--population", "7"], "(--population)"),
        ("rl", ["--devices", "1000"], "--devices 1000: only"),
    ],
)
def test_refusal_names_the_option_and_a_value_that_works(command, args, says, tmp_path):
    """The one line names the command's option (not only the Python field) and, where one exists, a value that
    is accepted: the value it suggests passes that check when given."""
    result = CliRunner().invoke(app, [command, *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and says in result.output, result.output
    if command == "lm":
        from eggroll.problems.text import LMConfig

        suggested = int(result.output.split("use ")[-1].split(".")[0])
        assert suggested == 8
        LMConfig(population=suggested, group_pairs=2).validate()
