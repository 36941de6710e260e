"""Teacher-forced log-probabilities of the labelled tokens of tokenized examples: how likely a
model finds a given answer to a given prompt, without generating anything.

Rows are left-padded (`inference.padding`), so every row's answer ends in the last column and
the model only has to turn the last few columns' hidden states into logits (`logits_to_keep`):
a vocabulary of 50k makes full-width logits the largest tensor by far. Batches are also capped
by the size of those logits, so a batch of long answers does not need gigabytes for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunewright.dataset.tokenize import IGNORE_INDEX, TokenizedExample
from tunewright.inference.padding import left_pad
from tunewright.inference.tokens import pad_token_id

# Logit entries (rows x answer columns x vocabulary) one forward pass may produce: 2^26 fp32
# values are 256 MiB, and log_softmax makes one more copy of that size.
MAX_LOGIT_ENTRIES = 1 << 26


def _answer_width(example: TokenizedExample) -> int:
    """Columns from the first labelled token to the end of the row (at least 1)."""
    first = next((i for i, t in enumerate(example.labels) if t != IGNORE_INDEX), None)
    return 1 if first is None else len(example.labels) - first


def _batches(sequences: Sequence[TokenizedExample], batch_size: int, vocab: int) -> list[list[int]]:
    """Row indices in batches of rows of similar length, each within `batch_size` rows and
    `MAX_LOGIT_ENTRIES` logits (one row alone may exceed it: it has to be scored somehow)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        need = _answer_width(sequences[i]) + 1
        wider = max(width, need)
        if current and (
            len(current) == batch_size or (len(current) + 1) * wider * vocab > MAX_LOGIT_ENTRIES
        ):
            batches.append(current)
            current, wider = [], need
        current.append(i)
        width = wider
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def labelled_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sequences: Sequence[TokenizedExample],
    *,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: the summed log-probability (nats) of its labelled tokens, each given every
    token before it, and how many tokens were labelled.

    Log-softmax runs in float32 whatever the model's precision, so a sum over hundreds of
    tokens does not accumulate bf16 rounding."""
    sums = np.zeros(len(sequences), dtype=np.float64)
    counts = np.zeros(len(sequences), dtype=np.int64)
    if not sequences:
        return sums, counts
    vocab = model.get_output_embeddings().weight.shape[0]
    pad = pad_token_id(tokenizer)
    for rows in _batches(sequences, batch_size, vocab):
        batch = left_pad([sequences[i].input_ids for i in rows], pad)
        tail = max(_answer_width(sequences[i]) for i in rows)
        labels = torch.full((len(rows), tail), IGNORE_INDEX, dtype=torch.long)
        for r, i in enumerate(rows):
            own = sequences[i].labels[-tail:]
            labels[r, tail - len(own) :] = torch.tensor(own, dtype=torch.long)
        # the logit at column c predicts the token at c + 1: the last `tail` tokens are predicted
        # by the `tail` columns before the last one (every row has a prompt, so they exist)
        logits = model(
            input_ids=batch.input_ids.to(model.device),
            attention_mask=batch.attention_mask.to(model.device),
            position_ids=batch.position_ids.to(model.device),
            logits_to_keep=tail + 1,
            use_cache=False,
        ).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        labels = labels.to(logp.device)
        trained = labels != IGNORE_INDEX
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums[rows] = torch.where(trained, picked, 0.0).sum(-1).double().cpu().numpy()
        counts[rows] = trained.sum(-1).cpu().numpy()
    return sums, counts
