"""Batched generation with the KV cache: left padding, greedy by default, stop at end-of-turn.

Prompts are sorted by length before batching so a batch holds prompts of similar length (less
padding, fewer wasted positions), then results are put back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    new_tokens: int
    stopped: bool  # ended with EOS/end-of-turn before the token limit


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus the chat template's end-of-turn token when it differs (e.g. <|eot_id|>)."""
    ids = {tokenizer.eos_token_id}
    for candidate in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(candidate)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


def label_trie(sequences: list[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """Map every prefix of the allowed token sequences to the tokens that may follow it."""
    nexts: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for k in range(len(seq)):
            nexts.setdefault(tuple(seq[:k]), set()).add(seq[k])
    return {prefix: sorted(tokens) for prefix, tokens in nexts.items()}


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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    trie = label_trie(allowed_sequences) if allowed_sequences is not None else None
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in indices)
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            attention_mask[row, width - len(prompts[i]) :] = 1
        sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        if trie is not None:

            def allowed(_row: int, ids: torch.Tensor, width: int = width) -> list[int]:
                # finished rows are padded by generate() whatever we return
                return trie.get(tuple(ids[width:].tolist()), stops)

            sampling["prefix_allowed_tokens_fn"] = allowed
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad_id,
            **sampling,
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
