"""Stop tokens and the pad id, which both decoders take from one place."""

import copy

import pytest

from tunewright.inference.tokens import pad_token_id, stop_token_ids
from tunewright.models import load_tokenizer


@pytest.fixture
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def test_the_end_of_turn_token_stops_even_when_eos_is_another_token(tokenizer):
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tokenizer) == [end_of_turn]  # EOS is <|im_end|> itself: listed once
    document_end = copy.deepcopy(tokenizer)
    document_end.eos_token = "<|endoftext|>"
    assert stop_token_ids(document_end) == sorted(
        {end_of_turn, document_end.convert_tokens_to_ids("<|endoftext|>")}
    )


def test_pad_id_is_the_pad_token_else_the_smallest_stop_token(tokenizer):
    assert pad_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    assert pad_token_id(no_pad) == min(stop_token_ids(no_pad))
