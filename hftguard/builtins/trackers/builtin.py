"""The built-in trackers: a JSON-lines file, TensorBoard, Weights & Biases and MLflow.

Only ``jsonl`` needs nothing beyond hftguard; the others import their package when the stage
starts and fail with an install hint when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

from hftguard.components import Tracker
from hftguard.errors import ConfigError


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, everything nested is cleaned too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers in ``values``, nested dicts flattened to ``a/b`` keys (bools skipped)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[name] = float(value)
    return out


class _PackageTracker(Tracker):
    """A tracker backed by an optional package."""

    package: ClassVar[str]
    install: ClassVar[str]

    def check(self) -> None:
        if importlib.util.find_spec(self.package.split(".")[0]) is None:
            raise ConfigError(
                f"--report-to {self.name} needs the '{self.package.split('.')[0]}' package, "
                "which is not installed.",
                hint=f"Install it (pip install {self.install}), or choose another tracker: "
                "--report-to jsonl.",
            )


class JsonlTracker(Tracker):
    """Write tracker.jsonl in the run directory: the config, one record per step, final metrics."""

    name = "jsonl"
    version = "1"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._file: Any = None

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_clean(record), default=str) + "\n")
        self._file.flush()

    def start(self, run_dir: Any, config: dict[str, Any]) -> None:
        self._file = (Path(run_dir) / "tracker.jsonl").open("a", encoding="utf-8")
        self._write({"type": "config", "config": config})

    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        self._write({"type": "step", "step": step, **values})

    def log_final(self, metrics: dict[str, Any]) -> None:
        self._write({"type": "metrics", "metrics": metrics})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardTracker(_PackageTracker):
    """Write TensorBoard event files into <run dir>/tb/ (needs the tensorboard package)."""

    name = "tensorboard"
    version = "1"
    package = "tensorboard"
    install = "tensorboard"

    def start(self, run_dir: Any, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        self._writer.add_text("config", "```\n" + json.dumps(_clean(config), indent=2) + "\n```")

    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        for key, value in scalars(values).items():
            self._writer.add_scalar(key, value, step)

    def log_final(self, metrics: dict[str, Any]) -> None:
        for key, value in scalars(metrics, "eval/").items():
            self._writer.add_scalar(key, value, 0)

    def close(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
            self._writer = None


class WandbTracker(_PackageTracker):
    """Log to Weights & Biases, offline unless WANDB_MODE says otherwise (needs wandb)."""

    name = "wandb"
    version = "1"
    package = "wandb"
    install = "wandb"

    def start(self, run_dir: Any, config: dict[str, Any]) -> None:
        wandb = importlib.import_module("wandb")
        os.environ.setdefault("WANDB_MODE", "offline")
        self._run = wandb.init(
            dir=str(run_dir), name=Path(run_dir).name, config=_clean(config), reinit=True
        )

    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        self._run.log(scalars(values), step=step)

    def log_final(self, metrics: dict[str, Any]) -> None:
        self._run.summary.update(scalars(metrics, "eval/"))

    def close(self) -> None:
        run = getattr(self, "_run", None)
        if run is not None:
            run.finish()
            self._run = None


class MlflowTracker(_PackageTracker):
    """Log to MLflow (its tracking URI from MLFLOW_TRACKING_URI; needs mlflow)."""

    name = "mlflow"
    version = "1"
    package = "mlflow"
    install = "mlflow"

    def start(self, run_dir: Any, config: dict[str, Any]) -> None:
        self._mlflow = importlib.import_module("mlflow")
        self._mlflow.start_run(run_name=Path(run_dir).name)
        flat = {k: str(v)[:500] for k, v in _flatten(config).items()}
        self._mlflow.log_params(flat)

    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        self._mlflow.log_metrics(_mlflow_keys(scalars(values)), step=step)

    def log_final(self, metrics: dict[str, Any]) -> None:
        self._mlflow.log_metrics(_mlflow_keys(scalars(metrics, "eval/")))

    def close(self) -> None:
        if getattr(self, "_mlflow", None) is not None:
            self._mlflow.end_run()
            self._mlflow = None


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _mlflow_keys(values: dict[str, float]) -> dict[str, float]:
    return {k.replace("[", "_").replace("]", "_"): v for k, v in values.items()}
