"""Shared-prefix training: the prompt start that every row of a micro-batch shares runs once.

Every SFT example of a recipe opens with the same tokens: the chat template's system header, the
system prompt, the user turn's header. On Banking77 that is 13 of ~40 tokens per example, a third
of the forward and backward work spent recomputing one thing. Here the micro-batch's common
prefix runs once, as a batch of one; its keys and values are broadcast to every row as a KV cache,
and the rows run only their own tokens after it. The broadcast is a view, so backward sums the
rows' gradients into the prefix's single pass: the loss and gradients are those of running every
row in full, up to float rounding (tested).

Only tokens that neither are nor predict a trained target may be shared: the hidden state at the
prefix's last position is never computed for the rows, and it would predict the first row token.
"""

from __future__ import annotations

import os

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from tunewright.dataset.tokenize import IGNORE_INDEX, TokenizedExample
from tunewright.train.batching import collate

# Below this the second, one-row pass costs about what sharing saves.
MIN_SHARED_TOKENS = 4


def _first_trained(example: TokenizedExample) -> int:
    return next(
        (i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels)
    )


def shared_prefix_length(examples: list[TokenizedExample]) -> int:
    """Tokens every example starts with that can run once for all of them (0: not worth it)."""
    if len(examples) < 2:
        return 0
    common = len(os.path.commonprefix([e.input_ids for e in examples]))
    # the prefix's last position must not predict a target (-1), and each row keeps a token (-1)
    length = min(
        common,
        min(_first_trained(e) for e in examples) - 1,
        min(len(e.input_ids) for e in examples) - 1,
    )
    return length if length >= MIN_SHARED_TOKENS else 0


def split_prefix(
    examples: list[TokenizedExample], length: int
) -> tuple[list[int], list[TokenizedExample]]:
    """The shared prefix's ids, and each example without it."""
    rest = [
        TokenizedExample(
            e.input_ids[length:],
            e.labels[length:],
            None if e.loss_weights is None else e.loss_weights[length:],
        )
        for e in examples
    ]
    return list(examples[0].input_ids[:length]), rest


def collate_shared_prefix(
    examples: list[TokenizedExample], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """`collate`, with the prefix the rows share (when worth it) cut from each row and given
    once as `prefix_ids` [1, P]; the forward then runs it once for all rows."""
    shared = shared_prefix_length(examples)
    if not shared:
        return collate(examples, pad_token_id)
    prefix, rows = split_prefix(examples, shared)
    return {**collate(rows, pad_token_id), "prefix_ids": torch.tensor([prefix])}


def body_after_prefix(
    causal_lm: PreTrainedModel,
    prefix_ids: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Last hidden states [B, T, H] of the rows `input_ids` [B, T] that all follow `prefix_ids` [1, P]."""
    rows, prefix_len = input_ids.shape[0], prefix_ids.shape[1]
    full_mask = torch.cat([attention_mask.new_ones(rows, prefix_len), attention_mask], dim=1)
    cache = DynamicCache(config=causal_lm.config)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        # sliding windows, linear attention: a cache we do not know how to broadcast; run rows in full
        full_ids = torch.cat([prefix_ids.expand(rows, -1), input_ids], dim=1)
        hidden = causal_lm.model(
            input_ids=full_ids, attention_mask=full_mask, use_cache=False
        ).last_hidden_state
        return hidden[:, prefix_len:]
    causal_lm.model(input_ids=prefix_ids, cache=cache, use_cache=True)
    for layer in cache.layers:  # views: backward sums every row's gradient into the one prefix pass
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)
    # position ids follow the cache length, so row tokens sit at the positions they have in full
    return causal_lm.model(
        input_ids=input_ids, attention_mask=full_mask, cache=cache, use_cache=True
    ).last_hidden_state
