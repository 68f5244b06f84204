"""Weights & Biases and MLflow through MetricsLogger, offline: what was logged is read back from their files.

W&B runs in ``mode="offline"`` into a temporary folder; its ``.wandb`` file (the LevelDB log format of
protobuf records that ``wandb sync`` uploads) is parsed here. MLflow writes to a ``file://`` store in a
temporary folder and is read back with its own client.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import eggroll
from eggroll import run
from eggroll.run.logging import MetricsLogger, read_jsonl


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a file:// store


def read_wandb_history(directory) -> tuple[list[dict], dict]:
    """The history rows and the config of the one offline W&B run under ``directory``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = list(directory.glob("wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            records.append(chunk)
            chunk = b""
    rows, config = [], {}
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
        elif record.WhichOneof("record_type") in ("config", "run"):
            items = record.config.update if record.HasField("config") else record.run.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    return rows, config


def read_mlflow(uri: str, experiment: str = "eggroll") -> tuple[dict[str, dict[int, float]], dict, str]:
    """``{metric: {step: value}}``, the params and the status of the one MLflow run in ``experiment``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    metrics = {
        key: {m.step: m.value for m in client.get_metric_history(found.info.run_id, key)} for key in found.data.metrics
    }
    return metrics, found.data.params, found.info.status


def test_metrics_logger_rows_reach_wandb_and_mlflow_and_read_back(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    rows = [
        {"mean_fitness": 3.5, "sigma": jnp.float32(0.25), "steps": 7, "best_solution": jnp.ones(4)},
        {"mean_fitness": 2.0, "sigma": jnp.float32(0.125), "steps": 9, "update_norm": float("nan")},
        {"mean_fitness": 1.25, "sigma": jnp.float32(0.0625), "steps": 11},
    ]
    with MetricsLogger(
        tmp_path / "metrics",
        tensorboard=False,
        columns=["mean_fitness", "sigma", "steps", "update_norm"],
        wandb={"project": "eggroll-test", "mode": "offline"},
        mlflow={"tracking_uri": uri, "run_name": "sphere", "tags": {"kind": "test"}},
        config={"population": 8, "strategy": "open_es"},
    ) as log:
        for g, row in enumerate(rows, start=1):
            log.log(g, row)
    written = read_jsonl(tmp_path / "metrics" / "metrics.jsonl")
    assert [r["generation"] for r in written] == [1, 2, 3]

    history, config = read_wandb_history(tmp_path / "metrics")
    assert [h["_step"] for h in history] == [1, 2, 3]
    for h, w in zip(history, written, strict=True):
        for key in ("mean_fitness", "sigma", "steps"):
            assert h[key] == pytest.approx(w[key]), key
        assert "best_solution" not in h
    assert "update_norm" not in history[1]  # non-finite values are left out, as in TensorBoard
    assert config["population"] == 8 and config["strategy"] == "open_es"

    metrics, params, status = read_mlflow(uri)
    assert set(metrics) == {"mean_fitness", "sigma", "steps"}
    assert metrics["mean_fitness"] == {1: 3.5, 2: 2.0, 3: 1.25}
    assert metrics["sigma"] == {1: 0.25, 2: 0.125, 3: 0.0625}
    assert params == {"population": "8", "strategy": "open_es"}
    assert status == "FINISHED"


def test_train_sends_the_loop_rows_and_settings_to_both_trackers(tmp_path):
    """Through ``run.train`` (RunOptions.wandb / .mlflow): the trackers hold exactly the JSONL rows."""
    uri = (tmp_path / "mlruns").as_uri()
    es = eggroll.open_es(population_size=8, solution=jnp.zeros(3), optimizer=optax.adam(0.1))
    run.train(
        es,
        lambda x, key: jnp.sum((x - 1.0) ** 2),
        jnp.zeros(3),
        key=jax.random.key(0),
        num_generations=4,
        log_dir=tmp_path / "metrics",
        progress=False,
        tensorboard=False,
        wandb={"mode": "offline", "project": "eggroll-test"},
        mlflow={"tracking_uri": uri, "experiment_name": "train"},
    )
    rows = read_jsonl(tmp_path / "metrics" / "metrics.jsonl")
    assert [r["generation"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["mean_fitness"] < rows[0]["mean_fitness"]
    history, config = read_wandb_history(tmp_path / "metrics")
    metrics, params, _ = read_mlflow(uri, "train")
    assert config["eggroll_task"] == params["eggroll_task"] == "train"
    for row in rows:
        g = row["generation"]
        (h,) = [h for h in history if h["_step"] == g]
        for key in ("mean_fitness", "best_fitness", "sigma", "update_norm"):
            assert math.isfinite(row[key])
            assert h[key] == pytest.approx(row[key]) and metrics[key][g] == pytest.approx(row[key]), (g, key)


def test_missing_tracker_packages_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r'pip install "eggroll\[wandb\]"'):
        MetricsLogger(tmp_path, tensorboard=False, wandb=True)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match="mlflow-skinny is enough"):
        MetricsLogger(tmp_path, tensorboard=False, mlflow=True)
    with pytest.raises(ValueError, match="unknown mlflow options"):
        monkeypatch.delitem(sys.modules, "mlflow")
        monkeypatch.delitem(sys.modules, "mlflow.tracking")
        MetricsLogger(tmp_path, tensorboard=False, mlflow={"uri": "x"})


def test_a_tracking_store_mlflow_cannot_open_is_one_clear_error(tmp_path):
    """A store MLflow cannot open (docs/scaling.md's sqlite:// under mlflow-skinny) was a 15-frame traceback."""
    uri = f"sqlite:///{tmp_path}/mlflow.db" if importlib.util.find_spec("sqlalchemy") is None else "nosuchstore://x"
    with pytest.raises(
        ValueError, match="could not open the tracking store '(sqlite|nosuchstore).*needs the full mlflow"
    ):
        MetricsLogger(tmp_path, tensorboard=False, mlflow={"tracking_uri": uri})
    with pytest.raises(ValueError, match="could not open the tracking store 'nosuchstore://x'"):
        MetricsLogger(tmp_path, tensorboard=False, mlflow={"tracking_uri": "nosuchstore://x"})
