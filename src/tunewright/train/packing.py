"""Sequence packing: several whole examples share one row, and attention stays inside each one.

`pack_examples` bins tokenised examples into rows of at most `max_seq_len` tokens
(first-fit-decreasing, so rows come out nearly full). `collate_packed` pads a batch of rows and
builds the mask that keeps every example blind to its row-mates, so a packed batch computes
exactly what each example would compute alone — the tests check losses and gradients match.

How transformers (5.x) is told about the packing — read from `transformers/masking_utils.py`:

* `create_causal_mask` returns a 4D `attention_mask` "as-is": it is passed straight to the
  attention function. `collate_packed` uses this path. The mask is *additive* float
  (0 = attend, dtype-min = blocked) because eager attention adds it to the scores (a bool mask
  there would be added as 0/1 and silently mask nothing), and SDPA and flex attention accept an
  additive float mask too. For SDPA alone, `mask_dtype=torch.bool` gives a 4x smaller mask.
  We do not rely on transformers inferring the packing, because that inference is switched off
  as soon as any 2D `attention_mask` is passed; an explicit mask cannot be lost that way.
* With no `attention_mask` at all, transformers detects packing from `position_ids` that
  restart at 0 (`find_packed_sequence_indices`) and builds the same block-diagonal causal mask
  itself, in each backend's format. Our `position_ids` are laid out for that too (padding is a
  segment of its own), so dropping `attention_mask` from `collate_packed`'s output also works,
  with a catch: the detection is skipped when a KV cache exists, and Llama makes one unless
  the forward gets `use_cache=False` (config default True) -- forget it and examples silently
  attend across each other. The explicit 4D mask does not depend on that.
* Flash-attention has no dense mask; it runs varlen kernels on `cu_seqlens` that it derives
  from `position_ids`, but only for a batch of one row (`_is_packed_sequence` checks
  `batch_size == 1`). `collate_packed_varlen` gives that layout: every row concatenated into
  one unpadded row, `position_ids` only (pass `use_cache=False` here too). Do not use it with SDPA or eager: they would build a
  (total_tokens x total_tokens) mask, batch-size times the work of padded rows.

Labels follow the transformers convention (aligned with `input_ids`; the model or the loss
shifts them by one). Packing sets each example's first label to IGNORE_INDEX: alone, that
label is never a target (nothing precedes it), but packed, the shift would make it the target
of the previous example's last token, leaking a prediction across examples.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunewright.dataset.tokenize import IGNORE_INDEX

__all__ = ["PackedRow", "collate_packed", "collate_packed_varlen", "pack_examples"]


@dataclass(frozen=True, slots=True)
class PackedRow:
    """One row of whole examples laid end to end (no padding; collation adds it)."""

    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where not trained, and at each example's first token
    position_ids: list[int]  # restart at 0 for each example
    seq_lens: list[int]  # length of each example, in row order
    example_indices: list[int]  # index of each example in the `examples` given to pack_examples
    loss_weights: list[float] | None = None  # per token; None when no example had weights

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class _FirstFit:
    """Max-segment-tree over the free space of bins: finds the leftmost bin that fits in O(log n).

    All `num_bins` bins start empty, so "open a new bin" needs no special case: when no used bin
    fits, the leftmost empty one does, and used bins stay a contiguous prefix.
    """

    def __init__(self, num_bins: int, capacity: int):
        self.size = 1 << max(num_bins - 1, 0).bit_length()
        self.free = [0] * (2 * self.size)
        self.free[self.size : self.size + num_bins] = [capacity] * num_bins
        for node in range(self.size - 1, 0, -1):
            self.free[node] = max(self.free[2 * node], self.free[2 * node + 1])

    def place(self, length: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.free[2 * node] >= length else 2 * node + 1
        self.free[node] -= length
        parent = node // 2
        while parent:
            self.free[parent] = max(self.free[2 * parent], self.free[2 * parent + 1])
            parent //= 2
        return node - self.size


def pack_examples(
    examples: Sequence[Mapping[str, Any]], max_seq_len: int, seed: int | None = None
) -> list[PackedRow]:
    """Pack whole examples into rows of at most `max_seq_len` tokens, first-fit-decreasing.

    Each example is a mapping with `input_ids` and `labels` (equal-length int lists) and
    optionally `loss_weights` (floats; an example without them weighs 1 per token, as in
    `TokenizedExample`). Examples longer than `max_seq_len` must have been truncated or dropped
    by the caller. The result is deterministic; with `seed`, the rows are shuffled (FFD emits
    the rows holding the longest examples first, which would otherwise order the epoch).
    """
    lengths = [len(example["input_ids"]) for example in examples]
    for i, (example, length) in enumerate(zip(examples, lengths, strict=True)):
        assert 0 < length <= max_seq_len, f"example {i} has {length} tokens; max is {max_seq_len}"
        assert len(example["labels"]) == length, f"example {i}: labels and input_ids differ"
        weights = example.get("loss_weights")
        assert weights is None or len(weights) == length, f"example {i}: loss_weights length"
    has_weights = any(example.get("loss_weights") is not None for example in examples)

    # Sort key breaks ties by position so the packing depends only on the input order.
    order = sorted(range(len(examples)), key=lambda i: (-lengths[i], i))
    bins = _FirstFit(len(examples), max_seq_len)
    members: list[list[int]] = []
    for i in order:
        b = bins.place(lengths[i])
        if b == len(members):
            members.append([])
        members[b].append(i)

    rows = [_build_row(examples, indices, has_weights) for indices in members]
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return rows


def _build_row(
    examples: Sequence[Mapping[str, Any]], indices: list[int], has_weights: bool
) -> PackedRow:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    weights: list[float] = []
    for i in indices:
        example = examples[i]
        length = len(example["input_ids"])
        input_ids.extend(example["input_ids"])
        labels.append(IGNORE_INDEX)  # see the module docstring: never a target, even alone
        labels.extend(example["labels"][1:])
        position_ids.extend(range(length))
        if has_weights:
            example_weights = example.get("loss_weights")
            weights.extend([1.0] * length if example_weights is None else example_weights)
    return PackedRow(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        seq_lens=[len(examples[i]["input_ids"]) for i in indices],
        example_indices=list(indices),
        loss_weights=weights if has_weights else None,
    )


def _segment_ids(rows: Sequence[PackedRow], width: int) -> torch.Tensor:
    """(batch, width) index of the example each token belongs to; padding is one more segment."""
    segments = torch.empty(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        counts = torch.tensor([*row.seq_lens, width - row.num_tokens])
        segments[r] = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return segments


def _weights(row: PackedRow) -> list[float]:
    """A row packed without weights, batched with rows that have them, weighs 1 per token."""
    return [1.0] * row.num_tokens if row.loss_weights is None else row.loss_weights


def collate_packed(
    rows: Sequence[PackedRow], pad_token_id: int, *, mask_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Right-pad packed rows to the longest one and build a per-example causal mask.

    Returns `input_ids`, `labels`, `position_ids` (batch, seq) and `attention_mask`
    (batch, 1, seq, seq), plus `loss_weights` when the rows have them. The mask is additive
    (0 = attend, `torch.finfo(mask_dtype).min` = blocked), which eager, SDPA and flex attention
    accept; `mask_dtype=torch.bool` (True = attend) is smaller but is for SDPA only. Padding
    forms a causal segment of its own: real tokens never see it, and no query row is fully
    blocked (a fully blocked row gives NaN in SDPA, which would reach the gradients).
    For flash-attention use `collate_packed_varlen` instead.
    """
    width = max(row.num_tokens for row in rows)

    def padded(values: list[Any], fill: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([*values, *[fill] * (width - len(values))], dtype=dtype)

    batch = {
        "input_ids": torch.stack([padded(r.input_ids, pad_token_id, torch.long) for r in rows]),
        "labels": torch.stack([padded(r.labels, IGNORE_INDEX, torch.long) for r in rows]),
        # Padding positions count up from 0 like one more example, so transformers' own packing
        # detection (used when attention_mask is dropped) sees the same segments we mask.
        "position_ids": torch.stack(
            [
                torch.tensor([*r.position_ids, *range(width - r.num_tokens)], dtype=torch.long)
                for r in rows
            ]
        ),
    }
    segments = _segment_ids(rows, width)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    allowed = allowed[:, None]  # one mask shared by all heads
    if mask_dtype == torch.bool:
        batch["attention_mask"] = allowed
    else:
        blocked = torch.finfo(mask_dtype).min
        batch["attention_mask"] = torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill(
            ~allowed, blocked
        )
    if any(row.loss_weights is not None for row in rows):
        batch["loss_weights"] = torch.stack([padded(_weights(r), 0.0, torch.float32) for r in rows])
    return batch


def collate_packed_varlen(rows: Sequence[PackedRow]) -> dict[str, torch.Tensor]:
    """Concatenate rows into one unpadded row of shape (1, total_tokens) for flash-attention.

    Returns `input_ids`, `labels`, `position_ids` (+ `loss_weights`) and deliberately no
    `attention_mask`: transformers' flash-attention path then derives each example's bounds
    from the `position_ids` restarting at 0 and calls the varlen kernel, so no compute is spent
    on padding or across examples. With SDPA or eager use `collate_packed`.
    """
    batch = {
        "input_ids": torch.tensor([[t for r in rows for t in r.input_ids]], dtype=torch.long),
        "labels": torch.tensor([[t for r in rows for t in r.labels]], dtype=torch.long),
        "position_ids": torch.tensor([[p for r in rows for p in r.position_ids]], dtype=torch.long),
    }
    if any(row.loss_weights is not None for row in rows):
        batch["loss_weights"] = torch.tensor([[w for r in rows for w in _weights(r)]])
    return batch
