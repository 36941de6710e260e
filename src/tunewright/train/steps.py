"""The pieces the loop calls besides the step itself: validation loss and progress."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunewright.dataset.tokenize import TokenizedExample
from tunewright.train.batching import collate


@torch.no_grad()
def evaluate_loss(
    forward, examples: list[TokenizedExample], batch_size: int, pad_id: int, accelerator
) -> float:
    """Mean per-token loss over `examples` (teacher forcing); restores training mode after."""
    forward.eval()
    total, weight = 0.0, 0.0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        with accelerator.autocast():
            nll_sum, w = forward(**batch)
        total += float(nll_sum)
        weight += float(w)
    forward.train()
    return total / max(weight, 1e-9)


def progress_bar(console: Console, *, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("lr {task.fields[lr]:.2e}"),
        TextColumn("{task.fields[tps]:.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )
