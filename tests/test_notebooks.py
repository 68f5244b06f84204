"""Every notebook is committed executed (outputs and figures) and runs again here in its small mode.

Small mode: ``EGGROLL_NOTEBOOK_SMALL=1``, which each notebook reads to shrink its generations; the cells
assert what they claim (e.g. that training improved), so a notebook that runs but learns nothing fails.
``getting_started.ipynb`` runs at full size in tests/test_docs_and_cli.py.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
# notebook -> text its small run must print
SMALL_RUNS = {
    "ask_tell_evosax.ipynb": ["evosax Open_ES", "LowRankPopulation", "loss of each seed's mean"],
    "bbob.ipynb": ["cocopp data sets", "agree between the runner and cocopp", "at the budget"],
    "finetune_smollm2.ipynb": ["135M parameters", "held-out reward: before", "after:"],
    "integer_lm.ipynb": ["dtypes after training: ['int8']", "validation bits/byte", "trained sample:"],
    "neuroevolution.ipynb": ["cartpole.gif", "pendulum.html", "population mean return"],
    "scaling.ipynb": ["all-gather ((256,),)", "process 1 of 2: 8 devices", "this kernel, 8 devices"],
}


def _read(name):
    import nbformat

    return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            out.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
    return "".join(out)


def test_every_notebook_is_tested_and_committed_executed_with_a_figure():
    names = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
    assert set(names) == {"getting_started.ipynb", *SMALL_RUNS}, "add each new notebook to SMALL_RUNS"
    for name in names:
        nb = _read(name)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.get("execution_count") for c in code), f"{name}: commit it executed"
        assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])), name
        if name in SMALL_RUNS:  # the use-case notebooks each show a figure
            assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", [])), name


@pytest.mark.parametrize("name", sorted(SMALL_RUNS))
def test_notebook_runs_in_small_mode(name, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("EGGROLL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    nb = _read(name)
    for cell in nb.cells:
        cell.pop("outputs", None) if cell.cell_type == "code" else None
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}).execute()
    text = _text(nb)
    for expected in SMALL_RUNS[name]:
        assert expected in text, (name, expected, text[-2000:])
