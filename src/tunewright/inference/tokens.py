"""The special tokens every decoder agrees on: where an answer stops, and what pads a batch."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# End-of-turn tokens of the common chat templates; a tokenizer's EOS is often the end-of-document
# token instead, and a chat model that stops only there runs on into a next turn.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus the chat template's end-of-turn token when it differs (e.g. <|eot_id|>), sorted."""
    ids = {tokenizer.eos_token_id}
    for candidate in _END_OF_TURN_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(candidate)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills padded positions: the tokenizer's pad token, else its smallest stop token.

    Padded positions are masked out of attention, so any id works; a stop token is one every
    tokenizer has.
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return stop_token_ids(tokenizer)[0]
