"""A time budget for training (`train.max_minutes`): the learning rate decays over the budget.

"Train for 15 minutes" is how people compare methods on a fixed machine, and how a domain team
with one box plans. Stopping a step-planned run when time is up would cut its schedule halfway,
at a high learning rate; guessing the steps that fit from a short timing run misjudges them,
because a few steps' speed on a shared machine is not the whole run's (measured: docs/results.md).
So the schedule's progress is whichever is further along, the steps done or the share of the
budget spent: it reaches its end exactly when time runs out, or at the last planned step.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class BudgetProgress:
    """The LR factor at a step: linear warm-up, then decay over max(step share, time share).

    The same shapes as transformers' cosine/linear/constant-with-warmup schedules when the
    time share stays behind. A callable object (not a closure), so LambdaLR's state dict keeps
    `elapsed_seconds` in checkpoints."""

    def __init__(self, kind: str, warmup_steps: int, total_steps: int, budget_seconds: float):
        self.kind, self.warmup_steps, self.total_steps = kind, warmup_steps, total_steps
        self.budget_seconds = budget_seconds
        self.elapsed_seconds = (
            0.0  # training time spent so far; the loop sets it before each scheduler step
        )

    @property
    def spent(self) -> bool:
        return self.elapsed_seconds >= self.budget_seconds

    def progress(self, step: int) -> float:
        by_steps = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return min(1.0, max(0.0, by_steps, self.elapsed_seconds / self.budget_seconds))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        p = self.progress(step)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        if self.kind == "linear":
            return 1.0 - p
        return 1.0


def budget_scheduler(
    optimizer: Optimizer, kind: str, warmup_steps: int, total_steps: int, max_minutes: float
) -> tuple[LambdaLR, BudgetProgress]:
    progress = BudgetProgress(kind, warmup_steps, total_steps, max_minutes * 60)
    return LambdaLR(optimizer, progress), progress
