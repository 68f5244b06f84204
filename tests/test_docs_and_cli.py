"""The notebook executes, doctests pass, the CLI demo runs (the docs site: tests/test_docs_site.py)."""

import doctest
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_getting_started_notebook_executes():
    import nbformat
    from nbclient import NotebookClient

    path = os.path.join(ROOT, "notebooks", "getting_started.ipynb")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "f(mean) after 500 generations" in outputs and "mse:" in outputs


@pytest.mark.parametrize("module", ["eggroll.lowrank", "eggroll.population", "eggroll.strategies.open_es"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_cli_demo_runs_and_saves_plot(tmp_path):
    """Run with a relative --out, the demo prints where its files are (once: no folder twice) and they are there."""
    r = subprocess.run(
        [sys.executable, "-m", "eggroll.cli", "demo", "--out", "run", "--generations", "40", "--population", "64"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    printed = dict(line.split() for line in r.stdout.splitlines() if line.startswith("  ") and len(line.split()) == 2)
    assert set(printed) == {"plot", "summary", "result"}, r.stdout
    assert all((tmp_path / path).is_file() for path in printed.values()), printed
    import json

    assert json.loads((tmp_path / "run" / "result.json").read_text())["files"] == {
        "plot": "demo.png",
        "summary": "demo.json",
    }  # relative to the run's folder
    tmp_path = tmp_path / "run"
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert all(v < summary["initial_mse"] for v in summary["final_mse"].values())
    # Without --checkpoint-every the demo keeps no checkpoints, so running it again into the same folder works.
    assert not (tmp_path / "checkpoints").exists()
    again = subprocess.run(
        [sys.executable, "-m", "eggroll.cli", "demo", "--out", str(tmp_path), "--generations", "20", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert len(json.loads((tmp_path / "demo.json").read_text())["curves"]["OpenAI-ES"]) == 20


def test_cli_demo_sigterm_refusals_then_resume(tmp_path):
    """`eggroll demo --checkpoint-every 1`: real SIGTERM mid-run: saved, exit 143; refusals; --resume finishes.

    That the resumed run's files equal an uninterrupted run's is checked for every command in
    tests/test_commands_resume.py."""
    import json
    import signal
    import time

    args = [sys.executable, "-m", "eggroll.cli", "demo", "--generations", "300", "--population", "32"]
    args += ["--checkpoint-every", "1"]
    out = tmp_path / "split"
    proc = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [p for p in (out / "checkpoints").glob("*") if p.name.isdigit()] if out.exists() else []
        if steps:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, output[-2000:]
    assert "stopped by SIGTERM" in output and "--resume" in output
    assert not (out / "demo.json").exists()

    fresh = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 2 and "pass --resume" in fresh.stderr
    other = subprocess.run([*args, "--out", str(out), "--resume", "--seed", "1"], capture_output=True, text=True)
    assert other.returncode == 2 and "seed: 0 in the checkpoint, 1 now" in other.stderr
    resumed = subprocess.run([*args, "--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed from chunk" in resumed.stdout
    curves = json.loads((out / "demo.json").read_text())["curves"]
    assert [len(c) for c in curves.values()] == [300, 300]


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "eggroll.cli", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "demo" in r.stdout


def test_readme_quick_start_runs():
    """The README's quick-start code runs as written and the loss goes down."""
    import re

    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    start = float(namespace["loss"](namespace["variables"]))
    end = float(namespace["loss"](namespace["es"].get_mean(namespace["state"])))
    assert end < 0.5 * start, (start, end)


def test_cli_joins_a_two_process_run_from_its_options():
    """`eggroll --coordinator ... --num-processes 2 --process-id i` initialises jax.distributed (real gloo)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EGGROLL_", "JAX_"))}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eggroll.cli",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "version",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, err[-2000:]
        assert f"process {i} of 2" in out and "2 local / 4 global devices" in out, out


def test_cli_demo_time_budget_stops_both_strategies_at_the_same_generation(tmp_path):
    """The strategies advance together, so a --time-budget stop compares them at equal generations (a stop
    before OpenAI-ES had started crashed the demo when they ran one after the other). That a command ends within
    its budget is timed in tests/test_apps_lm.py (the demo's first step, both compiles, takes most of a short one)."""
    import json

    args = [sys.executable, "-m", "eggroll.cli", "demo", "--generations", "100000", "--population", "16"]
    done = subprocess.run([*args, "--time-budget", "15", "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "time budget reached" in done.stdout, done.stdout[-1000:]
    lengths = {len(curve) for curve in json.loads((tmp_path / "demo.json").read_text())["curves"].values()}
    assert len(lengths) == 1 and 0 < lengths.pop() < 100000
