"""The base model's own next-token distributions on the replay chats: a KL term to the base.

With `train.general_replay_kl` = λ > 0, every trained token of a replay chat is learnt against
the mixture (1 - λ) · one-hot(the base's greedy token) + λ · (the base's distribution there),
not against the greedy token alone. Cross-entropy to that mixture differs from
(1 - λ) · CE + λ · KL(base ‖ tuned) only by a constant, so λ = 1 is a pure KL term to the
base model, λ = 0 plain replay. The distribution says more than its top token (how sure the base
was, which other words it weighed), so each replayed token holds the tuned model closer to the
base than its greedy token alone.

The base's weights never change during training, so its distributions are computed once, before
the adapter exists, in one forward pass over the replay chats, not by a second forward of the
base (adapter off) at every step: replayed rows cost no more than plain replay. Only each
position's top `TOP_K` tokens are kept, renormalised, because a full 49k-vocabulary row per
position would not fit in memory for long runs (the tail's mass is dropped, not spread).
Measured against plain replay: docs/results.md#forgetting-tradeoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from tunewright.dataset.tokenize import IGNORE_INDEX, TokenizedExample
from tunewright.train.batching import collate

TOP_K = 16
_BATCH = 16


@dataclass(frozen=True)
class Teacher:
    """The base's top tokens and their (renormalised) probabilities at each trained position of
    one example, in position order: [trained positions, TOP_K] each."""

    token_ids: torch.Tensor
    probs: torch.Tensor


def trained_positions(labels: Sequence[int]) -> list[int]:
    """Positions whose token is trained (the first token never is: nothing predicts it)."""
    return [t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX]


@torch.inference_mode()
def base_distributions(
    model: PreTrainedModel, examples: Sequence[TokenizedExample], pad_id: int
) -> list[Teacher]:
    """The model's top-`TOP_K` next-token distribution at every trained position of each example."""
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings().weight
    teachers = []
    for start in range(0, len(examples), _BATCH):
        chunk = examples[start : start + _BATCH]
        batch = collate(list(chunk), pad_id)
        hidden = model.base_model(
            input_ids=batch["input_ids"].to(head.device),
            attention_mask=batch["attention_mask"].to(head.device),
            use_cache=False,
        ).last_hidden_state
        for row, example in enumerate(chunk):
            # position t's token is predicted from the hidden state at t - 1
            before = torch.tensor(trained_positions(example.labels), dtype=torch.long) - 1
            logits = (hidden[row, before.to(hidden.device)] @ head.T).float()
            top = logits.softmax(-1).topk(TOP_K, dim=-1)
            probs = top.values / top.values.sum(-1, keepdim=True)
            teachers.append(Teacher(top.indices.cpu(), probs.cpu()))
    model.train(was_training)
    return teachers


def soft_targets(
    rows: Sequence[TokenizedExample], teachers: Sequence[Teacher | None], weight: float
) -> dict[str, torch.Tensor]:
    """A micro-batch's soft targets, aligned with the loss's trained positions (row by row, in
    position order, as `loss.select_trained_positions` takes them): `soft_ids` and `soft_probs`
    ([positions, TOP_K], the probabilities times `weight`, zero for rows without a teacher) and
    `hard_share` ([positions]: 1 - weight on a teacher's rows, else 1)."""
    ids, probs, hard = [], [], []
    for row, teacher in zip(rows, teachers, strict=True):
        n = len(trained_positions(row.labels))
        if teacher is None:
            ids.append(torch.zeros((n, TOP_K), dtype=torch.long))
            probs.append(torch.zeros((n, TOP_K)))
            hard.append(torch.ones(n))
        else:
            ids.append(teacher.token_ids)
            probs.append(teacher.probs * weight)
            hard.append(torch.full((n,), 1.0 - weight))
    return {
        "soft_ids": torch.cat(ids),
        "soft_probs": torch.cat(probs),
        "hard_share": torch.cat(hard),
    }
