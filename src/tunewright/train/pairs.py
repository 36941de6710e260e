"""Preference pairs as the loop's training units (train/preference.py trains on them).

A unit is a whole pair, so every micro-batch holds whole pairs and never half of one: unit i is
collated as two rows, chosen then rejected, next to each other, and `train.batch_size` counts
pairs (2 x batch_size rows). A pair weighs 1 in the step's normaliser, so the loss is a mean over
pairs. Each side is labelled on its final answer only (`ChatTokenizer.encode_pair`). Pairs are
never packed (a packed row would mix pairs); a micro-batch's shared prompt start runs once when
`train.shared_prefix` is on, as for SFT, which for one pair is its whole prompt.

DPO's reference log-probs are the model's before training (a new LoRA adapter adds zero to the
base; one continued from SFT is part of the reference, as the DPO paper's SFT model), computed
here once, before anything trains, for every training and validation pair, like the base's
targets of train/teacher.py: no second model in memory and no second forward per
step. They are computed in fixed batches in pair order, so a resumed run recomputes the same bits
(it keeps nothing on disk). Every process computes them all: the same bits on each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from tunewright.dataset.example import Example
from tunewright.dataset.prepared import PreparedDataset
from tunewright.dataset.tokenize import ChatTokenizer, TokenizedExample, TokenizedPair
from tunewright.errors import DataError
from tunewright.train.batching import collate
from tunewright.train.loss import sequence_log_probs
from tunewright.train.micro_batches import drop_untrained_tail
from tunewright.train.model_setup import causal_lm_of
from tunewright.train.shared_prefix import collate_shared_prefix

_REFERENCE_BATCH_PAIRS = 16
PREFERENCE_FORMATS = "preference, openai_preference or chosen_rejected"


def _rows(pair: TokenizedPair) -> tuple[TokenizedExample, TokenizedExample]:
    return pair.chosen, pair.rejected


def encode_pairs(
    chat: ChatTokenizer, examples: Sequence[Example], split: str, objective: str
) -> list[TokenizedPair]:
    """Both sides of every pair, the tokens after each final answer dropped; DataError naming the
    first row that is not a preference pair."""
    pairs = []
    for row, example in enumerate(examples):
        if not example.is_preference:
            raise DataError(
                f"train.objective is {objective!r}, which trains on preference pairs, but row "
                f"{row + 1} of the {split} split ({example.source or 'no source'}) has no "
                f"rejected answer; prepare pairs with data.format: {PREFERENCE_FORMATS}"
            )
        pair = chat.encode_pair(example)
        sides = [drop_untrained_tail(replace(s, loss_weights=None)) for s in _rows(pair)]
        if any(side.num_trained_tokens == 0 for side in sides):
            raise DataError(f"{example.source}: a side of the pair has no answer tokens to train")
        pairs.append(TokenizedPair(*sides))
    return pairs


@torch.inference_mode()
def reference_log_probs(
    model: nn.Module, pairs: Sequence[TokenizedPair], pad_id: int
) -> torch.Tensor:
    """The model's summed log-probs of each pair's two answers, [pairs, 2] float32 on the CPU;
    call it before training changes the model."""
    was_training = model.training
    model.eval()
    causal_lm = causal_lm_of(model)
    head = causal_lm.lm_head.weight
    out = []
    for start in range(0, len(pairs), _REFERENCE_BATCH_PAIRS):
        rows = [
            row for pair in pairs[start : start + _REFERENCE_BATCH_PAIRS] for row in _rows(pair)
        ]
        batch = collate(rows, pad_id)
        hidden = causal_lm.model(
            input_ids=batch["input_ids"].to(head.device),
            attention_mask=batch["attention_mask"].to(head.device),
            use_cache=False,
        ).last_hidden_state
        sums, _ = sequence_log_probs(hidden, head, batch["labels"].to(head.device))
        out.append(sums.view(-1, 2).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 2))


@dataclass(frozen=True)
class PairBatches:
    """The pairs of a split, their reference log-probs (DPO) and how to collate them: the loop's
    training units (as `MicroBatches` for SFT), and a validation set."""

    pairs: Sequence[TokenizedPair]
    reference: torch.Tensor | None  # [pairs, 2], chosen then rejected; None: no reference (ORPO)
    collate_rows: Callable[[list[TokenizedExample]], dict[str, torch.Tensor]]

    @classmethod
    def build(
        cls,
        pairs: Sequence[TokenizedPair],
        pad_id: int,
        *,
        reference: torch.Tensor | None = None,
        share_prefix: bool = False,
    ) -> PairBatches:
        whole_rows = collate_shared_prefix if share_prefix else collate
        return cls(pairs, reference, partial(whole_rows, pad_token_id=pad_id))

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def lengths(self) -> list[int]:
        """A pair's width in a batch: its longer side."""
        return [max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in self.pairs]

    def weight(self, indices: list[int]) -> float:
        return float(len(indices))  # each pair weighs 1: the loss is a mean over pairs

    def tokens(self, indices: list[int]) -> int:
        return sum(len(row.input_ids) for i in indices for row in _rows(self.pairs[i]))

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The pairs `indices` as one batch of 2 x len(indices) rows: chosen, rejected, ..."""
        batch = self.collate_rows([row for i in indices for row in _rows(self.pairs[i])])
        if self.reference is not None:
            batch["reference_logps"] = self.reference[indices].flatten()
        return batch

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every pair once, length-sorted, `batch_size` pairs a batch: for validation."""
        lengths = self.lengths
        order = sorted(range(len(self.pairs)), key=lambda i: lengths[i])
        for start in range(0, len(order), batch_size):
            yield self.collate(order[start : start + batch_size])


def preference_data(
    chat: ChatTokenizer,
    dataset: PreparedDataset,
    objective: str,
    pad_id: int,
    *,
    share_prefix: bool,
) -> tuple[PairBatches, PairBatches]:
    """The train and val splits' pairs, without reference log-probs (`with_reference` adds them)."""
    train, val = (
        PairBatches.build(
            encode_pairs(chat, dataset.split(split), split, objective),
            pad_id,
            share_prefix=share_prefix,
        )
        for split in ("train", "val")
    )
    return train, val


def with_reference(
    model: nn.Module,
    splits: tuple[PairBatches, ...],
    pad_id: int,
    autocast: Callable[[], AbstractContextManager],
) -> tuple[PairBatches, ...]:
    """The splits with `model`'s reference log-probs: call it before training changes anything.
    `autocast`: the precision training runs in, so the policy starts equal to its reference."""
    with autocast():
        return tuple(
            replace(split, reference=reference_log_probs(model, split.pairs, pad_id))
            for split in splits
        )
