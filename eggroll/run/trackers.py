"""Experiment trackers behind :class:`~eggroll.run.logging.MetricsLogger`: Weights & Biases and MLflow.

Each tracker receives the rows the logger writes to ``metrics.jsonl`` (the
generation as the step, every finite scalar metric) and the run's settings
once, as W&B config or MLflow params. Both are optional extras, imported only
when asked for::

    pip install "eggroll[wandb]"     # or: pip install wandb
    pip install "eggroll[mlflow]"    # or: pip install mlflow-skinny

Both also work without a server: W&B with ``mode="offline"`` (``wandb sync``
uploads the run later), MLflow with a ``file://`` tracking URI (MLflow 3 asks
for ``MLFLOW_ALLOW_FILE_STORE=true`` in the environment for it) or a
database URI.

Trackers only append: a resumed run logs to a new tracker run, starting at the
generation after the checkpoint (the JSONL and CSV files are the ones cut back
to the checkpoint). To continue the same W&B run instead, pass its
``id=...`` and ``resume="allow"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["MlflowTracker", "WandbTracker", "make_tracker"]


def _finite(row: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k != "generation" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class WandbTracker:
    """Log rows to a Weights & Biases run.

    Args:
        directory: W&B's local files go under it (``wandb.init(dir=...)``) unless
            ``options`` has ``dir``.
        options: keyword arguments of ``wandb.init`` (``project``, ``name``,
            ``mode="offline"``, ``id``, ``resume``, ``tags`` ...).
        config: the run's settings, recorded as the W&B run's config (merged
            under ``options["config"]``).

    Raises:
        ImportError: wandb is not installed.
    """

    def __init__(self, directory: str | Path, options: Mapping[str, Any], config: Mapping[str, Any] | None = None):
        try:
            import wandb
        except ImportError:
            raise ImportError('wandb= needs the wandb package: pip install "eggroll[wandb]"') from None
        kwargs = {"dir": str(directory), **options}
        kwargs["config"] = {**(config or {}), **dict(options.get("config") or {})}
        Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(**kwargs)

    def log(self, row: Mapping[str, Any]) -> None:
        """Log one row at step ``row["generation"]``."""
        self.run.log(_finite(row), step=int(row["generation"]))

    def flush(self) -> None:
        """Nothing to do: W&B sends rows in the background."""

    def close(self) -> None:
        """Finish the W&B run (an offline run is then complete on disk)."""
        self.run.finish()


class MlflowTracker:
    """Log rows to an MLflow run (through ``MlflowClient``: no global active run is touched).

    Args:
        options: ``tracking_uri`` (default: MLflow's, e.g. ``MLFLOW_TRACKING_URI``),
            ``experiment_name`` (default ``"eggroll"``, created if missing),
            ``run_name``, ``tags`` (a dict).
        config: the run's settings, logged as MLflow params.

    Raises:
        ImportError: mlflow (or mlflow-skinny) is not installed.
        ValueError: an unknown option, or a tracking store MLflow cannot open.
    """

    def __init__(self, options: Mapping[str, Any], config: Mapping[str, Any] | None = None):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError('mlflow= needs MLflow: pip install "eggroll[mlflow]" (mlflow-skinny is enough)') from None
        unknown = set(options) - {"tracking_uri", "experiment_name", "run_name", "tags"}
        if unknown:
            known = "tracking_uri, experiment_name, run_name, tags"
            raise ValueError(f"unknown mlflow options {sorted(unknown)}: use {known}")
        name = options.get("experiment_name", "eggroll")
        try:
            self.client = MlflowClient(tracking_uri=options.get("tracking_uri"))
            experiment = self.client.get_experiment_by_name(name)
        except Exception as err:  # MLflow raises its own classes, one per store kind
            from mlflow.tracking import get_tracking_uri

            raise ValueError(
                f"MLflow could not open the tracking store {options.get('tracking_uri') or get_tracking_uri()!r} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:300]}); a sqlite:// store needs the full "
                "mlflow package, a file:// store on MLflow 3 needs MLFLOW_ALLOW_FILE_STORE=true"
            ) from err
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        tags = {str(k): str(v) for k, v in dict(options.get("tags") or {}).items()}
        self.run_id = self.client.create_run(experiment_id, run_name=options.get("run_name"), tags=tags).info.run_id
        params = [Param(str(k), str(v)[:6000]) for k, v in (config or {}).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self._pending: list[Any] = []

    def log(self, row: Mapping[str, Any]) -> None:
        """Queue one row at step ``row["generation"]`` (sent by :meth:`flush`)."""
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["generation"])
        self._pending += [Metric(k, v, now, step) for k, v in _finite(row).items()]

    def flush(self) -> None:
        """Send the queued metrics (at most 1000 per request, MLflow's limit)."""
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        """Send what is queued and mark the run finished."""
        self.flush()
        self.client.set_terminated(self.run_id)


def make_tracker(
    kind: str, spec: bool | Mapping[str, Any] | None, directory: str | Path, config: Mapping[str, Any] | None = None
) -> WandbTracker | MlflowTracker | None:
    """The tracker ``kind`` (``"wandb"`` or ``"mlflow"``) for ``spec``: ``None`` / ``False`` is none,
    ``True`` one with default options, a mapping its options (see each class)."""
    if spec is None or spec is False:
        return None
    options = {} if spec is True else dict(spec)
    if kind == "wandb":
        return WandbTracker(directory, options, config)
    if kind == "mlflow":
        return MlflowTracker(options, config)
    raise ValueError(f"unknown tracker {kind!r}: 'wandb' or 'mlflow'")
