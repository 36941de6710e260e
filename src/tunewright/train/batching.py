"""Micro-batch schedule and padding collation.

Examples are grouped by length before batching (shuffle, then sort within windows of a few
batches, then shuffle the batches) so padding stays small while the order stays random. The
whole schedule for all epochs is computed up front from the seed, which makes the data
position a single integer: resuming means skipping that many micro-batches.
"""

from __future__ import annotations

import math
import random

import torch

from tunewright.dataset.tokenize import IGNORE_INDEX, TokenizedExample

_SORT_WINDOW_BATCHES = 32  # larger: less padding, less randomness


def epoch_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of micro-batches (lists of example indices), length-grouped and shuffled."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * _SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def batch_schedule(
    lengths: list[int], batch_size: int, epochs: float, seed: int
) -> list[list[int]]:
    """All micro-batches of the run; a fractional epoch takes a prefix of the last one."""
    per_epoch = math.ceil(len(lengths) / batch_size)
    total = max(1, round(per_epoch * epochs))
    schedule: list[list[int]] = []
    epoch = 0
    while len(schedule) < total:
        schedule.extend(epoch_batches(lengths, batch_size, seed + epoch))
        epoch += 1
    return schedule[:total]


def collate(examples: list[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding has attention 0 and no label."""
    width = max(len(e.input_ids) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    weighted = any(e.loss_weights is not None for e in examples)
    loss_weights = torch.zeros((n, width), dtype=torch.float32) if weighted else None
    for row, e in enumerate(examples):
        length = len(e.input_ids)
        input_ids[row, :length] = torch.tensor(e.input_ids)
        labels[row, :length] = torch.tensor(e.labels)
        attention_mask[row, :length] = 1
        if loss_weights is not None:
            weights = e.loss_weights or [1.0 if t != IGNORE_INDEX else 0.0 for t in e.labels]
            loss_weights[row, :length] = torch.tensor(weights)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    if loss_weights is not None:
        batch["loss_weights"] = loss_weights
    return batch
