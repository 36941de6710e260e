"""TrainState goes into a checkpoint and comes back whole, from a unit save or from a real run."""

import math
from dataclasses import fields

import torch
from rich.console import Console

from tests.train.test_loop import config
from tunewright.data.prepare import prepare
from tunewright.train.checkpoint import capture_rng_state, load_checkpoint, save_checkpoint
from tunewright.train.loop import finish, fit
from tunewright.train.setup import setup
from tunewright.train.state import TrainState

QUIET = Console(quiet=True)


def _save(directory, step, data_state, metrics):
    """A one-parameter checkpoint holding the given counters; returns what loading it gives."""
    weight = torch.nn.Parameter(torch.ones(2))
    model = torch.nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.AdamW([weight])
    path = save_checkpoint(
        directory,
        step=step,
        data_state=data_state,
        metrics=metrics,
        model_state={},
        optimizer=optimizer,
        scheduler=None,
        rng=capture_rng_state(),
        keep_last=1,
        best_metric_key="val_loss",
    )
    return load_checkpoint(path, model, optimizer, None, restore_rng=False)


def test_every_field_round_trips_through_a_checkpoint(tmp_path):
    state = TrainState(
        step=7,
        trained_tokens=1234,
        train_seconds=12.5,
        train_loss_ema=0.1 + 0.2,  # floats that JSON must keep to the last bit
        val_loss=1 / 3,
        best_val_loss=0.25,
        evals_without_gain=2,
    )
    unset = [f.name for f in fields(TrainState) if getattr(state, f.name) == f.default]
    assert not unset, f"give {unset} a non-default value, so the round trip checks them"
    saved = _save(tmp_path, **state.checkpoint_fields())
    assert TrainState.from_checkpoint(saved) == state


def test_a_fresh_state_round_trips_too(tmp_path):
    """No validation yet: best_val_loss is infinite and val_loss None."""
    restored = TrainState.from_checkpoint(_save(tmp_path, **TrainState(step=1).checkpoint_fields()))
    assert restored == TrainState(step=1) and math.isinf(restored.best_val_loss)


def test_reads_a_checkpoint_in_the_layout_before_train_state(tmp_path):
    saved = _save(
        tmp_path,
        step=4,
        data_state={"trained_tokens": 900, "evals_without_gain": 1, "train_seconds": 3.0},
        metrics={"val_loss": 2.5, "best_val_loss": 2.0},
    )
    assert TrainState.from_checkpoint(saved) == TrainState(
        step=4,
        trained_tokens=900,
        train_seconds=3.0,
        val_loss=2.5,
        best_val_loss=2.0,
        evals_without_gain=1,
    )


def test_a_resumed_run_starts_from_the_state_the_run_ended_with(tmp_path, tiny_model_dir):
    cfg = config(
        tmp_path,
        tiny_model_dir,
        "train.max_steps=3",
        "train.eval_every_steps=2",
        "train.checkpoint_every_steps=3",
        "train.resume=true",
        "train.report_to=[]",
    )
    dataset = prepare(cfg, console=QUIET)
    run, state = setup(cfg, dataset, console=QUIET)
    assert state == TrainState()
    finish(run, state, fit(run, state, QUIET))
    assert state.step == 3 and state.val_loss is not None and state.train_loss_ema is not None

    _, resumed = setup(cfg, dataset, console=QUIET)
    assert resumed == state
