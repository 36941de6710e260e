"""Training metrics: one JSON line per logged step in `metrics.jsonl`, plus TensorBoard/MLflow.

TensorBoard and MLflow are optional: each is used when its package is installed and silently
skipped otherwise, because neither is needed to train and both are heavy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: Path, run_name: str, config: dict):
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard = None
        self._mlflow = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        except ImportError:
            pass
        try:
            import mlflow

            mlflow.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
            mlflow.set_experiment("tunewright")
            self._mlflow = mlflow.start_run(run_name=run_name)
            mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})
        except ImportError:
            pass

    def log(self, step: int, **values: float) -> None:
        row = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for key, value in values.items():
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(key, value, step)
        if self._mlflow is not None:
            import mlflow

            mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run()


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
