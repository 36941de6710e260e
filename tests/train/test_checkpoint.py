"""A resumed run must equal an uninterrupted one, and no crash may cost the last good checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

import tunewright
from tunewright.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

CHECKPOINT_FILES = {
    "COMPLETE",
    "model.safetensors",
    "optimizer.json",
    "optimizer.safetensors",
    "rng.json",
    "rng.safetensors",
    "trainer_state.json",
}


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Model, optimizer and schedule as a training run would build them from its config."""
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 4)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=2, num_training_steps=20
    )
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler) -> None:
    # The batch and the dropout both draw from the torch RNG, so resume needs it restored too.
    x = torch.randn(5, 8)
    model(x).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def save(directory: Path, step: int, model, optimizer, scheduler, **overrides) -> Path:
    arguments = {
        "step": step,
        "model_state": model.state_dict(),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "rng": capture_rng_state(),
        "data_state": {"epoch": 0, "rows_seen": 8 * step},
        "metrics": {"eval_loss": 1.0 / step},
        "keep_last": 3,
        "best_metric_key": "eval_loss",
    }
    return save_checkpoint(directory, **(arguments | overrides))


def test_resume_is_bitwise_identical_to_never_stopping(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, optimizer, scheduler = build()
    for _ in range(3):
        train_step(model, optimizer, scheduler)
    rng = capture_rng_state()
    path = save(tmp_path, 3, model, optimizer, scheduler, rng=rng)
    assert {p.name for p in path.iterdir()} == CHECKPOINT_FILES

    torch.manual_seed(123)  # a fresh process: other weights, other optimizer state, other RNG
    resumed = build()
    state = load_checkpoint(path, *resumed)
    assert (state.step, state.data_state, state.metrics) == (
        3,
        {"epoch": 0, "rows_seen": 24},
        {"eval_loss": 1 / 3},
    )
    assert isinstance(resumed[1].param_groups[0]["betas"], tuple)
    # Two steps: the first runs on the lr restored into the optimizer, only the second on one
    # the restored scheduler computed.
    for _ in range(2):
        train_step(*resumed)

    restore_rng_state(rng)
    for _ in range(2):
        train_step(model, optimizer, scheduler)  # the twin that was never saved

    for (name, a), b in zip(model.named_parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(a, b), name
    assert scheduler.get_last_lr() == resumed[2].get_last_lr()
    assert optimizer.param_groups[0]["lr"] == resumed[1].param_groups[0]["lr"]
    for a, b in zip(optimizer.state.values(), resumed[1].state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_partial_model_state_loads_and_unknown_names_fail(tmp_path: Path) -> None:
    model, optimizer, scheduler = build()
    trainable = {"3.weight": model[3].weight, "3.bias": model[3].bias}  # as LoRA would pass
    path = save(tmp_path, 1, model, optimizer, scheduler, model_state=trainable)

    other, other_optimizer, other_scheduler = build()
    frozen = other[0].weight.clone()
    load_checkpoint(path, other, other_optimizer, other_scheduler)
    assert torch.equal(other[3].weight, model[3].weight)
    assert torch.equal(other[0].weight, frozen)

    path = save(tmp_path, 2, model, optimizer, scheduler, model_state={"lm_head.weight": frozen})
    with pytest.raises(KeyError, match="lm_head.weight"):
        load_checkpoint(path, *build())


def test_rng_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    model, optimizer, scheduler = build()
    path = save(tmp_path, 1, model, optimizer, scheduler)
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])

    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    load_checkpoint(path, model, optimizer, scheduler)
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


def test_pruning_keeps_last_k_and_best(tmp_path: Path) -> None:
    model, optimizer, scheduler = build()
    losses = [5.0, 3.0, 4.0, 6.0, float("nan"), 8.0]
    for step, loss in enumerate(losses, start=1):
        save(tmp_path, step, model, optimizer, scheduler, keep_last=2, metrics={"eval_loss": loss})
    save(tmp_path, 7, model, optimizer, scheduler, keep_last=2, metrics={})  # no eval this step

    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-"))
    assert kept == ["step-00000002", "step-00000006", "step-00000007"]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best == {"checkpoint": "step-00000002", "metric": "eval_loss", "value": 3.0}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    with pytest.raises(FileExistsError):
        save(tmp_path, 7, model, optimizer, scheduler)


def test_latest_ignores_unfinished_saves(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    model, optimizer, scheduler = build()
    done = save(tmp_path, 1, model, optimizer, scheduler)
    leftover = tmp_path / ".tmp-step-2-0123abcd"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a file")
    unmarked = tmp_path / "step-00000003"  # renamed into place, died before COMPLETE
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"")

    assert latest_checkpoint(tmp_path) == done
    assert not leftover.exists()
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        load_checkpoint(unmarked, model, optimizer, scheduler)

    # the next save sweeps the unmarked folder, and may reuse its step
    save(tmp_path, 3, model, optimizer, scheduler)
    assert latest_checkpoint(tmp_path) == unmarked and (unmarked / "COMPLETE").exists()


def test_unserialisable_metrics_fail_before_writing(tmp_path: Path) -> None:
    model, optimizer, scheduler = build()
    with pytest.raises(TypeError, match="Tensor"):
        save(tmp_path, 1, model, optimizer, scheduler, metrics={"eval_loss": torch.tensor(1.0)})
    assert list(tmp_path.iterdir()) == []


SAVE_FOREVER = """
import sys, torch
from pathlib import Path
from tunewright.train.checkpoint import capture_rng_state, save_checkpoint
optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
step = 0
while True:
    step += 1
    save_checkpoint(
        Path(sys.argv[1]), step=step, model_state={"big": torch.full((8_000_000,), float(step))},
        optimizer=optimizer, scheduler=None, rng=capture_rng_state(), data_state={"step": step},
        metrics={}, keep_last=2, best_metric_key=None,
    )
    print(step, flush=True)
"""


def test_kill_mid_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    src = Path(tunewright.__file__).parents[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", SAVE_FOREVER, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"1"
        # Strike while a save is under way, i.e. while its temporary folder exists.
        deadline = time.monotonic() + 10
        while not any(p.name.startswith(".tmp-step-") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline, "the child never started a second save"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    path = latest_checkpoint(tmp_path)
    assert path is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    holder = torch.nn.Module()
    holder.register_buffer("big", torch.zeros(8_000_000))
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    state = load_checkpoint(path, holder, optimizer, None)
    assert state.data_state["step"] == state.step >= 1
    assert torch.equal(holder.big, torch.full((8_000_000,), float(state.step)))
