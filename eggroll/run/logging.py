"""Metrics logs for long runs: JSONL and CSV always; TensorBoard, Weights & Biases and MLflow on request.

One row per logged generation, with the scalar metrics of ``tell``
(best / mean / std fitness, sigma, update and gradient norms ...) and the
throughput. Files: ``metrics.jsonl`` (one JSON object per line, every key),
``metrics.csv`` (the columns of the first row) and, if ``tensorboardX``
imports, an event file viewable with ``tensorboard --logdir <dir>``. The same
rows go to Weights & Biases (``wandb=``) and MLflow (``mlflow=``), optional
extras (:mod:`eggroll.run.trackers`), with the run's settings as their config.

On resume, :meth:`MetricsLogger.truncate` drops rows past the checkpoint, so a
resumed log reads as if the run had never stopped. In a multi-process run only
process 0 writes.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with MetricsLogger(d, tensorboard=False) as log:
    ...     row = log.log(0, {"mean_fitness": 1.5})
    >>> open(f"{d}/metrics.jsonl").read().strip()
    '{"generation": 0, "mean_fitness": 1.5}'
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MetricsLogger", "read_jsonl", "scalar_metrics"]


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """The scalar entries of a metrics dict as Python numbers (arrays of size > 1 are dropped)."""
    out: dict[str, float | int] = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, int, float, np.number)):
            out[k] = v.item() if isinstance(v, np.number) else v
        elif getattr(v, "shape", None) is not None and math.prod(v.shape) == 1 and hasattr(v, "dtype"):
            x = np.asarray(v).reshape(())
            if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
                out[k] = int(x)
            elif np.issubdtype(x.dtype, np.floating):
                out[k] = float(x)
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file; a last row cut short (no newline: its writer was killed) is not one.

    Raises:
        ValueError: a line that is not JSON (named by its number: the file was changed after it was written).
    """
    rows = []
    for n, line in enumerate(_complete_rows(path).split("\n"), 1):
        try:
            if line.strip():
                rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} line {n} is not a JSON row ({err}): the file was changed after the run wrote it. Restore "
                f"it, or move {Path(path).parent} away to resume without the earlier rows"
            ) from None
    return rows


def _complete_rows(path: str | os.PathLike) -> str:
    """The file's text without a last row cut short (no newline: a process killed while writing it)."""
    with open(path, newline="") as f:
        text = f.read()
    return text[: text.rfind("\n") + 1]


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _summary_writer() -> Any:
    """tensorboardX's ``SummaryWriter``, imported without importing torch.

    tensorboardX imports torch, where it is installed, only to accept torch tensors, which eggroll never
    logs; that import costs about 1.3 s per process (every command's start). A ``None`` entry in
    ``sys.modules`` makes tensorboardX's ``import torch`` fail, which it catches; the entry is removed at
    once, so torch imports normally afterwards. Where torch or tensorboardX is already imported, nothing
    changes.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLogger:
    """Append per-generation metrics to JSONL, CSV and (optionally) TensorBoard.

    Args:
        directory: where the files go (created).
        tensorboard: ``True`` requires tensorboardX, ``False`` disables it,
            ``None`` (default) uses it when it imports.
        enabled: write anything at all (default: only on JAX process 0).
        flush_every: flush files every this many rows.
        columns: the CSV header, in order (default: the keys of the first row);
            a row without a column leaves its cell empty.
        wandb: also log to Weights & Biases: ``True`` with W&B's defaults, or
            the keyword arguments of ``wandb.init`` (e.g. ``{"project": "es",
            "mode": "offline"}``); files go under ``directory`` unless ``dir`` is given.
        mlflow: also log to MLflow: ``True`` with MLflow's defaults (``MLFLOW_TRACKING_URI``;
            without it MLflow 3 uses a sqlite store, which needs the full ``mlflow`` package,
            not ``mlflow-skinny``), or
            ``{"tracking_uri": ..., "experiment_name": ..., "run_name": ..., "tags": ...}``.
        config: the run's settings, recorded as W&B config and MLflow params.

    Raises:
        ImportError: ``tensorboard=True`` but tensorboardX is not installed, or
            ``wandb`` / ``mlflow`` requested but not installed.

    Example:
        Offline W&B and a local MLflow file store beside the files (MLflow 3 wants
        ``MLFLOW_ALLOW_FILE_STORE=true`` for a file store; not run here)::

            MetricsLogger("runs/a/metrics", wandb={"project": "es", "mode": "offline"},
                          mlflow={"tracking_uri": "file:runs/mlruns"})
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        tensorboard: bool | None = None,
        enabled: bool | None = None,
        flush_every: int = 1,
        columns: list[str] | tuple[str, ...] | None = None,
        wandb: bool | Mapping[str, Any] | None = None,
        mlflow: bool | Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        if enabled is None:
            import jax

            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.directory = Path(directory)
        self.jsonl_path = self.directory / "metrics.jsonl"
        self.csv_path = self.directory / "metrics.csv"
        self.flush_every = max(1, flush_every)
        self._rows = 0
        self._jsonl = self._csv_file = self._csv = self._tb = None
        self._trackers: list[Any] = []
        self._columns: list[str] | None = (
            ["generation", *(c for c in columns if c != "generation")] if columns else None
        )
        self._warned_columns = False
        self._header_written = False
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if tensorboard is not False:
            try:
                SummaryWriter = _summary_writer()
            except ImportError:
                if tensorboard:
                    raise ImportError(
                        "tensorboard=True needs the tensorboardX package: pip install tensorboardX "
                        "(or pass tensorboard=None to use it only when installed)."
                    ) from None
            else:
                self._tb = self._writer(SummaryWriter)
        from eggroll.run.trackers import make_tracker

        for kind, spec in (("wandb", wandb), ("mlflow", mlflow)):
            tracker = make_tracker(kind, spec, self.directory, config)
            if tracker is not None:
                self._trackers.append(tracker)

    # ------------------------------------------------------------------ files
    def _writer(self, summary_writer: Any, purge_step: int | None = None) -> Any:
        # A unique file per writer: tensorboardX names files by the second, and a writer opened in the
        # same second as the previous one (a quick resume) would otherwise overwrite its events.
        suffix = f".{os.getpid()}.{time.time_ns()}"
        return summary_writer(str(self.directory / "tensorboard"), purge_step=purge_step, filename_suffix=suffix)

    def _open(self) -> None:
        if self._jsonl is not None:
            return
        self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115 - kept open for the run
        if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path, newline="") as f:
                self._columns = next(csv.reader(f), None)
                self._header_written = self._columns is not None
        self._csv_file = open(self.csv_path, "a", newline="")  # noqa: SIM115

    def truncate(self, generation: int) -> None:
        """Drop rows with ``generation >= generation`` (call when resuming from that step).

        The JSONL and CSV files are rewritten without them; TensorBoard gets a
        purge marker at ``generation`` (``SummaryWriter(purge_step=...)``), so
        it hides the earlier run's events from that step on.
        """
        if not self.enabled:
            return
        self._close_files()
        if self._tb is not None:
            self._tb.close()
            self._tb = self._writer(_summary_writer(), purge_step=int(generation))
        if self.jsonl_path.exists():
            rows = [r for r in read_jsonl(self.jsonl_path) if r.get("generation", -1) < generation]
            with open(self.jsonl_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        if self.csv_path.exists():
            reader = csv.reader(io.StringIO(_complete_rows(self.csv_path), newline=""))
            head = next(reader, None)
            if head:
                gi = head.index("generation") if "generation" in head else None
                keep = []
                for r in reader:
                    if not r or (gi is not None and len(r) > gi and r[gi] == ""):
                        continue  # a blank line (an editor's), or a row without a generation
                    try:
                        if gi is None or int(float(r[gi])) < generation:
                            keep.append(r)
                    except (ValueError, IndexError):
                        raise ValueError(
                            f"{self.csv_path} line {reader.line_num} is not a metrics row ({','.join(r)[:60]!r}): "
                            f"the file was changed after the run wrote it. Restore it, or move {self.directory} away "
                            "to resume without the earlier rows"
                        ) from None
                with open(self.csv_path, "w", newline="") as f:
                    csv.writer(f).writerows([head, *keep])

    def log(self, generation: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Write one row; non-scalar entries (e.g. ``best_solution``) are skipped.

        Returns:
            The row written (``generation`` first).
        """
        row: dict[str, Any] = {"generation": int(generation)}
        row.update({k: v for k, v in scalar_metrics(metrics).items() if k != "generation"})
        if not self.enabled:
            return row
        self._open()
        self._jsonl.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
        if not self._header_written:
            self._columns = self._columns or list(row)
            self._header_written = True
            csv.writer(self._csv_file).writerow(self._columns)
        if set(row) - set(self._columns) and not self._warned_columns:
            self._warned_columns = True
            extra = sorted(set(row) - set(self._columns))
            msg = f"metrics {extra} appeared after the CSV header was written; they are in the JSONL only."
            warnings.warn(msg, stacklevel=2)
        csv.writer(self._csv_file).writerow([row.get(c, "") for c in self._columns])
        if self._tb is not None:
            for k, v in row.items():
                if k != "generation" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, global_step=row["generation"])
        for tracker in self._trackers:
            tracker.log(row)
        self._rows += 1
        if self._rows % self.flush_every == 0:
            self.flush()
        return row

    def flush(self) -> None:
        """Push buffered rows to disk."""
        for f in (self._jsonl, self._csv_file, self._tb, *self._trackers):
            if f is not None:
                f.flush()

    def _close_files(self) -> None:
        for f in (self._jsonl, self._csv_file):
            if f is not None:
                f.close()
        self._jsonl = self._csv_file = None

    def close(self) -> None:
        """Flush and close every file."""
        self.flush()
        self._close_files()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        trackers, self._trackers = self._trackers, []
        for tracker in trackers:
            tracker.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
