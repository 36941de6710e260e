"""What a resumed run must get back besides weights, optimiser, scheduler and random generators.

`TrainState` is saved into every checkpoint and restored from it whole, here and nowhere else.
On disk it keeps the layout of `trainer_state.json` that earlier runs wrote: the step at the top,
`val_loss` and `best_val_loss` under `metrics` (the checkpoint pruning keeps the one with the
lowest `val_loss`), every other field under `data_state`. A field that an older checkpoint lacks
takes its default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from tunewright.train.checkpoint import TrainerState

_METRICS = ("val_loss", "best_val_loss")


@dataclass
class TrainState:
    """The counters of a run, updated in place by the loop at every optimiser step."""

    step: int = 0  # optimiser steps done; the data position too (step x micro-batches per step)
    trained_tokens: int = 0  # tokens (padding excluded) through forward and backward, all ranks
    train_seconds: float = 0.0  # training time spent, before a resume too: train.max_minutes
    train_loss_ema: float | None = None  # the smoothed loss the progress bar and result show
    val_loss: float | None = None  # the latest validation's, None before the first
    best_val_loss: float = math.inf
    evals_without_gain: int = 0  # validations since best_val_loss last fell (early stopping)

    def checkpoint_fields(self) -> dict[str, Any]:
        """`step`, `data_state` and `metrics`, as `save_checkpoint` takes them."""
        data_state = asdict(self)
        step = data_state.pop("step")
        metrics = {key: data_state.pop(key) for key in _METRICS}
        return {"step": step, "data_state": data_state, "metrics": metrics}

    @classmethod
    def from_checkpoint(cls, saved: TrainerState) -> TrainState:
        """The state `checkpoint_fields` saved, from what `load_checkpoint` returned."""
        names = {field.name for field in fields(cls)}
        values = {k: v for k, v in (saved.data_state | saved.metrics).items() if k in names}
        return cls(**(values | {"step": saved.step}))
