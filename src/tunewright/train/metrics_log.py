"""Training metrics: one JSON line per logged step in `metrics.jsonl`, plus TensorBoard and MLflow.

`metrics.jsonl` is always written (the report reads it). TensorBoard event files go to
`<run>/tensorboard/` by default (`tensorboard --logdir runs`). MLflow is opt-in
(`train.report_to: [tensorboard, mlflow]`) because creating its local SQLite store costs
several seconds per run; it logs to `<run>/mlflow.db` (`mlflow ui --backend-store-uri
sqlite:///runs/NAME/mlflow.db`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunewright.errors import ConfigError


class MetricsLogger:
    def __init__(self, run_dir: Path, run_name: str, config: dict, report_to: list[str]):
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard = None
        self._mlflow = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "mlflow" in report_to:
            try:
                import mlflow
            except ImportError:
                raise ConfigError(
                    "train.report_to lists 'mlflow' but MLflow is not installed: "
                    "pip install 'tunewright[mlflow]', or remove it from train.report_to"
                ) from None
            mlflow.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
            mlflow.set_experiment("tunewright")
            self._mlflow = mlflow
            mlflow.start_run(run_name=run_name)
            mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})

    def log(self, step: int, **values: float) -> None:
        row = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
