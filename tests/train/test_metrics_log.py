"""Metric sinks: every logged row reaches metrics.jsonl, TensorBoard and (when asked) MLflow."""

import json

import pytest
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tunewright.data.prepare import prepare
from tunewright.errors import ConfigError
from tunewright.train.loop import train
from tunewright.train.metrics_log import MetricsLogger

from .test_loop import config

QUIET = Console(quiet=True)


def _jsonl_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_training_writes_the_same_losses_to_jsonl_tensorboard_and_mlflow(tmp_path, tiny_model_dir):
    cfg = config(
        tmp_path,
        tiny_model_dir,
        "train.epochs=1",
        "train.report_to=[tensorboard, mlflow]",
        "train.eval_every_steps=2",
    )
    train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    expected = _jsonl_losses(cfg.run_dir)
    assert len(expected) >= 2

    events = EventAccumulator(str(cfg.run_dir / "tensorboard"))
    events.Reload()
    assert {"train_loss", "lr", "val_loss", "tokens_per_second"} <= set(events.Tags()["scalars"])
    board = {e.step: e.value for e in events.Scalars("train_loss")}
    assert board.keys() == expected.keys()
    assert all(
        board[s] == pytest.approx(expected[s], rel=1e-6) for s in expected
    )  # TB stores float32

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cfg.run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tunewright").experiment_id])
    assert run.data.params["train.lora_r"] == str(cfg.train.lora_r)
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert history == pytest.approx(expected)
    assert run.info.status == "FINISHED"


def test_tensorboard_off_writes_only_jsonl(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "train.max_steps=2", "train.report_to=[]")
    train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    assert _jsonl_losses(cfg.run_dir)
    assert not (cfg.run_dir / "tensorboard").exists() and not (cfg.run_dir / "mlflow.db").exists()


def test_mlflow_requested_but_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ConfigError, match=r"train.report_to lists 'mlflow'.*pip install"):
        MetricsLogger(tmp_path, "run", {}, ["mlflow"])
