"""The training units of a run and the one way to collate them, both settled when built.

A unit is an example, or a packed row of examples (train/packing.py). The modes are chosen in
`MicroBatches.build`, once: packing decides the units and their collation, label weighting the
units' token weights (train/label_weights.py), a shared prefix the collation of plain rows
(train/shared_prefix.py). The loop then only asks for a micro-batch by the units' indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from tunewright.dataset.example import Example
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer, TokenizedExample
from tunewright.train.batching import collate
from tunewright.train.label_weights import LabelWeighting, label_weights, reweighted
from tunewright.train.packing import PackedRow, collate_packed, pack_examples
from tunewright.train.shared_prefix import collate_shared_prefix
from tunewright.train.teacher import Teacher, soft_targets

Unit = TokenizedExample | PackedRow
Collate = Callable[[list[Unit]], dict[str, torch.Tensor]]


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


@dataclass(frozen=True)
class MicroBatches:
    """The training units (examples, or packed rows of examples) and how to collate them."""

    units: Sequence[Unit]
    collate_units: Collate
    unit_weights: list[float]  # each unit's loss normaliser: its trained tokens' own weight
    teachers: Sequence[Teacher | None] = ()  # per unit, with soft targets (train/teacher.py)
    teacher_weight: float = 0.0  # the share of a taught token's target that is the teacher's

    @classmethod
    def build(
        cls,
        chat: ChatTokenizer,
        examples: list[Example],
        pad_id: int,
        *,
        packing: bool,
        max_seq_len: int,
        extra: Sequence[TokenizedExample] = (),
        extra_weight: float = 1.0,
        extra_teachers: Sequence[Teacher] = (),
        teacher_weight: float = 0.0,
        share_prefix: bool = False,
        label_weighting: LabelWeighting = "none",
    ) -> MicroBatches:
        """`extra`: examples already tokenised (general replay), trained alongside `examples`
        with loss weight `extra_weight` per token (a domain token's is 1); `extra_teachers`: the
        base's distributions on them, `teacher_weight` their share of the targets (plain rows
        only). `share_prefix`: collate a micro-batch's common prompt start once (plain rows
        only: a packed row is a whole sequence of its own). `label_weighting`: class weights
        for labelled examples."""
        if extra_teachers and packing:
            raise ValueError("soft targets need plain rows: packing is on")
        plain = [
            drop_untrained_tail(e) for e in [*(chat.encode_example(e) for e in examples), *extra]
        ]
        by_label = label_weights([e.label for e in examples], label_weighting)
        weighted = [
            reweighted(unit, by_label.get(e.label, 1.0)) for unit, e in zip(plain, examples)
        ] + [reweighted(unit, extra_weight) for unit in plain[len(examples) :]]

        def arrange(encoded: list[TokenizedExample]) -> Sequence[Unit]:
            if not packing:
                return encoded
            return pack_examples(
                [
                    {"input_ids": e.input_ids, "labels": e.labels, "loss_weights": e.loss_weights}
                    for e in encoded
                ],
                max_seq_len,
            )

        whole_rows: Collate = partial(collate_packed if packing else collate, pad_token_id=pad_id)
        collate_units = (
            partial(collate_shared_prefix, pad_token_id=pad_id)
            if share_prefix and not packing
            else whole_rows
        )
        units = arrange(weighted)
        # The step's loss is divided by its trained tokens' own weights, not the class- or
        # replay-weighted ones: else a micro-batch of one label (length grouping makes them
        # common) would divide its class weight back out, and a heavier replayed token would
        # also count heavier in the divisor. Computed once per unit, so every rank can size a
        # step without communication.
        normalising = arrange(plain) if by_label or extra_weight != 1.0 else units
        weights = [trained_weight(whole_rows([unit])) for unit in normalising]
        teachers = [None] * len(examples) + list(extra_teachers) if extra_teachers else ()
        return cls(units, collate_units, weights, teachers, teacher_weight)

    @property
    def lengths(self) -> list[int]:
        return [len(u.input_ids) for u in self.units]

    def weight(self, indices: list[int]) -> float:
        return sum(self.unit_weights[i] for i in indices)

    def tokens(self, indices: list[int]) -> int:
        return sum(len(self.units[i].input_ids) for i in indices)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The units `indices` as one batch; `unit_ids` names them (train/frozen_cache.py keys
        each unit's frozen-layer output by it)."""
        rows = [self.units[i] for i in indices]
        batch = {**self.collate_units(rows), "unit_ids": torch.tensor(indices)}
        if self.teachers and any(self.teachers[i] is not None for i in indices):
            taught = [self.teachers[i] for i in indices]
            batch |= soft_targets(rows, taught, self.teacher_weight)
        return batch
