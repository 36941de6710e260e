"""Batched generation with the KV cache: left padding, greedy by default, stop at end-of-turn.

Prompts are sorted by length before batching so a batch holds prompts of similar length (less
padding, fewer wasted positions), then results are put back in the caller's order.

When all prompts start with the same long prefix (a fair base's instruction, label list and
k-shot examples: often 20x longer than the question), the prefix is run through the model once
and its KV cache is copied into every batch. Rows are then padded between the prefix and the
question ("prefix, pads, question"); position ids follow the attention mask, so every row sees
exactly the positions it would see alone.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from tunewright.inference.padding import left_pad
from tunewright.inference.tokens import pad_token_id, stop_token_ids

# Sharing a shorter prefix saves less than the cache copies cost.
MIN_SHARED_PREFIX_TOKENS = 32


@dataclass(frozen=True, slots=True)
class Generation:
    """One answer of `generate`: its text (special tokens dropped, stripped) and how it ended."""

    text: str
    new_tokens: int  # generated tokens, the stop token included
    stopped: bool  # ended with EOS/end-of-turn before the token limit


def label_trie(sequences: list[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """Map every prefix of the allowed token sequences to the tokens that may follow it."""
    nexts: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for k in range(len(seq)):
            nexts.setdefault(tuple(seq[:k]), set()).add(seq[k])
    return {prefix: sorted(tokens) for prefix, tokens in nexts.items()}


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one token of each prompt to prefill."""
    common = os.path.commonprefix([list(p) for p in prompts])
    return max(0, min(len(common), min(len(p) for p in prompts) - 1))


def _prefix_cache(model: PreTrainedModel, prefix: list[int]) -> DynamicCache | None:
    """The KV cache of `prefix`, or None when this model's cache layout is not plain per-token KV
    (sliding windows, linear attention keep state we do not know how to share safely)."""
    cache = DynamicCache(config=model.config)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    model(input_ids=torch.tensor([prefix], device=model.device), cache=cache, use_cache=True)
    return cache


def _expanded(cache: DynamicCache, rows: int) -> DynamicCache:
    # generate() appends to the cache it is given: every batch needs its own copy
    batch_cache = copy.deepcopy(cache)
    for layer in batch_cache.layers:
        layer.batch_repeat_interleave(rows)
    return batch_cache


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    allowed_sequences: list[list[int]] | None = None,
    on_batch_done: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Generate an answer for each tokenised prompt; returns them in the prompts' order.

    With `allowed_sequences` (token ids of each label followed by the end-of-turn token),
    decoding is constrained to those sequences: greedy search over the label trie, so every
    answer is a valid label.
    """
    model.eval()
    stops = stop_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    trie = label_trie(allowed_sequences) if allowed_sequences is not None else None
    shared = shared_prefix_length(prompts) if len(prompts) > 1 else 0
    prefix_cache = (
        _prefix_cache(model, list(prompts[0][:shared]))
        if shared >= MIN_SHARED_PREFIX_TOKENS
        else None
    )
    shared = shared if prefix_cache is not None else 0
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = left_pad([prompts[i] for i in indices], pad_id, shared_prefix=shared)
        width = batch.input_ids.shape[1]
        options = (
            {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        )
        if prefix_cache is not None:
            options["cache"] = _expanded(prefix_cache, len(indices))
        if trie is not None:

            def allowed(_row: int, ids: torch.Tensor, width: int = width) -> list[int]:
                # finished rows are padded by generate() whatever we return
                return trie.get(tuple(ids[width:].tolist()), stops)

            options["prefix_allowed_tokens_fn"] = allowed
        output = model.generate(
            input_ids=batch.input_ids.to(model.device),
            attention_mask=batch.attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad_id,
            **options,
        )
        new = output[:, width:].tolist()
        for row, i in enumerate(indices):
            tokens = new[row]
            stop_at = next((k for k, t in enumerate(tokens) if t in stops), None)
            answer = tokens if stop_at is None else tokens[:stop_at]
            results[i] = Generation(
                text=tokenizer.decode(answer, skip_special_tokens=True).strip(),
                new_tokens=len(answer) + (0 if stop_at is None else 1),
                stopped=stop_at is not None,
            )
        if on_batch_done is not None:
            on_batch_done(len(indices))
    return results  # type: ignore[return-value]
