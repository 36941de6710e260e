"""Batched generation with the KV cache: left padding, greedy by default, stop at end-of-turn.

Prompts are sorted by length before batching so a batch holds prompts of similar length (less
padding, fewer wasted positions), then results are put back in the caller's order.

When all prompts start with the same long prefix (a fair base's instruction, label list and
k-shot examples: often 20x longer than the question), the prefix is run through the model once
and its keys and values are kept once: every row of every batch attends to that one copy
(`shared_prefix.cascade_attention`), so a decode step reads the prefix once, not once per row.
Rows are padded between the prefix and the question ("prefix, pads, question"); position ids
follow the attention mask, so every row sees exactly the positions it would see alone.

Each batch's own keys and values go into a `shared_prefix.RowCache`, sized up front for the
longest question plus `max_new_tokens`, so a decode step writes one column instead of copying
the whole cache (`torch.cat` in transformers' DynamicCache). Models whose cache is not plain
per-token KV, or whose attention is not the plain softmax we reimplement, keep transformers'
own cache and attention (and no prefix sharing).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from tunewright.inference.padding import left_pad
from tunewright.inference.shared_prefix import RowCache, SharedPrefix, cascade, prefix_of
from tunewright.inference.tokens import pad_token_id, stop_token_ids

# Sharing a shorter prefix saves less than running the prefix as a separate pass costs.
MIN_SHARED_PREFIX_TOKENS = 32
# The attention implementations whose math `cascade_attention` reproduces (plain softmax, no
# softcap or sinks); others (flash kernels, custom ones) are left as they are.
CASCADE_REPLACES = ("sdpa", "eager")


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


def row_caches_fit(model: PreTrainedModel) -> bool:
    """True when this model's cache is plain per-token KV and its attention plain softmax: then
    `RowCache` and `cascade_attention` compute what transformers would (sliding windows, linear
    attention keep state, and other kernels compute scores, that we do not reproduce)."""
    layers = DynamicCache(config=model.config).layers
    return (
        all(type(layer) is DynamicLayer for layer in layers)
        and model.config._attn_implementation in CASCADE_REPLACES
    )


def _prefix(model: PreTrainedModel, prefix: list[int]) -> SharedPrefix:
    """The keys and values of `prefix`, computed once with the model's own attention."""
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prefix], device=model.device), cache=cache, use_cache=True)
    return prefix_of(cache)


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
    fits = row_caches_fit(model)
    shared = shared_prefix_length(prompts) if len(prompts) > 1 and fits else 0
    shared = shared if shared >= MIN_SHARED_PREFIX_TOKENS else 0
    prefix = _prefix(model, list(prompts[0][:shared])) if shared else None
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = left_pad([prompts[i] for i in indices], pad_id, shared_prefix=shared)
        width = batch.input_ids.shape[1]
        options = (
            {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        )
        attention = contextlib.nullcontext()
        if fits:  # this batch's own tokens: the question after the prefix, then the answer
            capacity = width - shared + max_new_tokens
            options["cache"] = RowCache(model.config.num_hidden_layers, capacity, shared)
            attention = cascade(model, prefix)
        if trie is not None:

            def allowed(_row: int, ids: torch.Tensor, width: int = width) -> list[int]:
                # finished rows are padded by generate() whatever we return
                return trie.get(tuple(ids[width:].tolist()), stops)

            options["prefix_allowed_tokens_fn"] = allowed
        with attention:
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
