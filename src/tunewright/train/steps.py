"""The pieces the loop calls per step: micro-batch building, validation loss, progress."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunewright.dataset.example import Example
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer, TokenizedExample
from tunewright.train.batching import collate
from tunewright.train.label_weights import LabelWeighting, label_weights, reweighted
from tunewright.train.packing import PackedRow, collate_packed, pack_examples
from tunewright.train.shared_prefix import shared_prefix_length, split_prefix


def drop_untrained_tail(example: TokenizedExample) -> TokenizedExample:
    """Cut tokens after the last trained one (e.g. the newline after <|im_end|>): with causal
    attention they influence no loss, so computing them is pure waste."""
    last = max(
        (i for i, t in enumerate(example.labels) if t != IGNORE_INDEX),
        default=len(example.labels) - 1,
    )
    if last == len(example.labels) - 1:
        return example
    weights = None if example.loss_weights is None else example.loss_weights[: last + 1]
    return TokenizedExample(example.input_ids[: last + 1], example.labels[: last + 1], weights)


def trained_weight(batch: dict[str, torch.Tensor]) -> float:
    """The loss normaliser of a collated batch: summed token weights of the shifted labels."""
    if "loss_weights" in batch:
        return float(batch["loss_weights"][:, 1:].sum())
    return float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


@dataclass
class MicroBatches:
    """The training units (examples, or packed rows of examples) and how to collate them."""

    units: list[TokenizedExample] | list[PackedRow]
    pad_id: int
    packed: bool
    _weights: list[float]
    share_prefix: bool = (
        False  # collate a micro-batch's common prompt start once (train/shared_prefix.py)
    )

    @classmethod
    def build(
        cls,
        chat: ChatTokenizer,
        examples: list[Example],
        pad_id: int,
        *,
        packing: bool,
        max_seq_len: int,
        extra: list[TokenizedExample] = (),
        share_prefix: bool = False,
        label_weighting: LabelWeighting = "none",
    ) -> MicroBatches:
        """`extra`: examples already tokenised (general replay), trained alongside `examples`
        with weight 1. `label_weighting`: class weights for labelled examples (train/label_weights.py)."""
        plain = [
            drop_untrained_tail(e) for e in [*(chat.encode_example(e) for e in examples), *extra]
        ]
        by_label = label_weights([e.label for e in examples], label_weighting)
        weighted = [
            reweighted(unit, by_label.get(e.label, 1.0)) for unit, e in zip(plain, examples)
        ] + plain[len(examples) :]

        def arrange(encoded: list[TokenizedExample]) -> list:
            if not packing:
                return encoded
            return pack_examples(
                [
                    {"input_ids": e.input_ids, "labels": e.labels, "loss_weights": e.loss_weights}
                    for e in encoded
                ],
                max_seq_len,
            )

        units = arrange(weighted)
        # The step's loss is divided by its trained tokens' own weights, not the class-weighted
        # ones: else a micro-batch of one label (length grouping makes them common) would divide
        # its class weight back out. Computed once per unit, so every rank can size a step
        # without communication.
        normalising = arrange(plain) if by_label else units
        weights = [
            trained_weight(cls._collate(normalising[i : i + 1], pad_id, packing))
            for i in range(len(units))
        ]
        return cls(units, pad_id, packing, weights, share_prefix=share_prefix and not packing)

    @property
    def lengths(self) -> list[int]:
        return [len(u.input_ids) for u in self.units]

    def weight(self, indices: list[int]) -> float:
        return sum(self._weights[i] for i in indices)

    def tokens(self, indices: list[int]) -> int:
        return sum(len(self.units[i].input_ids) for i in indices)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        units = [self.units[i] for i in indices]
        shared = shared_prefix_length(units) if self.share_prefix else 0
        if not shared:
            return self._collate(units, self.pad_id, self.packed)
        prefix, rows = split_prefix(units, shared)
        return {**collate(rows, self.pad_id), "prefix_ids": torch.tensor([prefix])}

    @staticmethod
    def _collate(units, pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
        return collate_packed(units, pad_id) if packed else collate(units, pad_id)


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
