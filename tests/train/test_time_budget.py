"""train.max_minutes: the learning rate decays over a time budget, and training stops when it is spent."""

import json
import math

import pytest
import torch
from rich.console import Console
from transformers import get_scheduler

from tests.train.test_loop import config
from tunewright.data.prepare import prepare
from tunewright.train.checkpoint import latest_checkpoint
from tunewright.train.loop import train
from tunewright.train.time_budget import BudgetProgress

QUIET = Console(quiet=True)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_with_time_to_spare_it_is_the_usual_step_schedule(kind):
    progress = BudgetProgress(kind, warmup_steps=3, total_steps=20, budget_seconds=3600)
    reference = get_scheduler(
        "constant_with_warmup" if kind == "constant" else kind,
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
        num_warmup_steps=3,
        num_training_steps=20,
    )
    expected = []
    for _ in range(21):
        expected.append(reference.get_last_lr()[0])
        reference.step()
    assert [progress(step) for step in range(21)] == pytest.approx(expected)


def test_time_spent_moves_the_decay_ahead_of_the_steps():
    progress = BudgetProgress("cosine", warmup_steps=2, total_steps=1000, budget_seconds=100)
    progress.elapsed_seconds = 50  # half the budget at step 10: half-way down the cosine
    assert progress(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert progress(1) == 0.5  # warm-up still counts in steps
    assert not progress.spent
    progress.elapsed_seconds = 100
    assert progress.spent and progress(11) == pytest.approx(0.0)


def test_training_stops_when_the_budget_is_spent_with_the_lr_at_its_end(tmp_path, tiny_model_dir):
    # 6 ms: spent by the end of the first step, whatever the machine
    cfg = config(
        tmp_path,
        tiny_model_dir,
        "train.max_minutes=0.0001",
        "train.lr_warmup_steps=0",
        "train.checkpoint_every_steps=1",
    )
    result = train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    assert result.out_of_time and result.steps == 1 < result.planned_steps
    assert (
        result.output_dir is not None
        and (result.output_dir / "adapter_model.safetensors").is_file()
    )
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "lr" in r] == [
        0.0
    ]  # the cosine ran to its end with the budget
    state = json.loads(
        (latest_checkpoint(cfg.run_dir / "checkpoints") / "trainer_state.json").read_text()
    )
    assert (
        state["data_state"]["train_seconds"] >= 0.006
    )  # a resumed run counts the time already spent


def test_without_a_budget_every_planned_step_runs(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "train.max_steps=3")
    result = train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    assert not result.out_of_time and result.steps == 3
