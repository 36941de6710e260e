"""The pieces the loop calls besides the step itself: validation loss and progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunewright.dataset.tokenize import TokenizedExample
from tunewright.train.batching import collate


@dataclass(frozen=True)
class PlainValidation:
    """SFT's validation examples, collated as they are (no shared prefix, no class weights)."""

    examples: list[TokenizedExample]
    pad_id: int

    def __len__(self) -> int:
        return len(self.examples)

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every example once, length-sorted, `batch_size` a batch."""
        order = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i].input_ids))
        for start in range(0, len(order), batch_size):
            yield collate(
                [self.examples[i] for i in order[start : start + batch_size]], self.pad_id
            )


@torch.no_grad()
def evaluate_loss(forward, batches: Iterable[dict[str, torch.Tensor]], accelerator) -> float:
    """Mean loss over `batches` (the forward's summed loss over its summed weight: per token
    for SFT, per pair for preference objectives); restores training mode after."""
    forward.eval()
    total, weight = 0.0, 0.0
    for batch in batches:
        with accelerator.autocast():
            loss_sum, w = forward(**batch)
        total += float(loss_sum)
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
