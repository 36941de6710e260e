"""Chat rendering and the training mask: only assistant turns and their end-of-turn token train."""

import pytest

from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer
from tunewright.errors import DataError
from tunewright.models import load_tokenizer


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    return ChatTokenizer(load_tokenizer(str(tiny_model_dir)), "Name the intent.", max_seq_len=128)


def trained_text(chat, encoded):
    ids = [t for t in encoded.labels if t != IGNORE_INDEX]
    return chat.tokenizer.decode(ids)


def test_only_the_answer_and_end_of_turn_are_trained(chat):
    example = Example(
        messages=(Message("user", "I lost my card."), Message("assistant", "lost_or_stolen_card"))
    )
    encoded = chat.encode_example(example)
    assert trained_text(chat, encoded) == "lost_or_stolen_card<|im_end|>"
    assert (
        encoded.labels[-2] == chat.tokenizer.eos_token_id
        or encoded.labels[-1] == chat.tokenizer.eos_token_id
    )
    assert chat.tokenizer.decode(encoded.input_ids).startswith(
        "<|im_start|>system\nName the intent."
    )


def test_multi_turn_weights(chat):
    example = Example(
        messages=(
            Message("user", "hi"),
            Message("assistant", "hello", weight=0.0),
            Message("user", "my card?"),
            Message("assistant", "card_arrival", weight=2.0),
        )
    )
    encoded = chat.encode_example(example)
    assert trained_text(chat, encoded) == "card_arrival<|im_end|>"
    assert {w for w, t in zip(encoded.loss_weights, encoded.labels) if t != IGNORE_INDEX} == {2.0}


def test_prompt_ends_with_the_generation_header(chat):
    example = Example(messages=(Message("user", "I lost my card."), Message("assistant", "x")))
    assert chat.prompt_text(example.prompt_messages).endswith("<|im_start|>assistant\n")


def test_too_long_example_names_its_source(chat):
    long = Example(
        messages=(Message("user", "card " * 400), Message("assistant", "x")), source="f.jsonl:7"
    )
    with pytest.raises(DataError, match="f.jsonl:7: .* tokens, over data.max_seq_len=128"):
        chat.encode_example(long)


def test_a_preference_pair_trains_only_each_final_answer(chat):
    pair = Example(
        messages=(
            Message("user", "hi"),
            Message("assistant", "hello"),
            Message("user", "I lost my card."),
            Message("assistant", "lost_or_stolen_card"),
        ),
        rejected="card_arrival",
        source="pairs.jsonl:3",
    )
    encoded = chat.encode_pair(pair)
    assert trained_text(chat, encoded.chosen) == "lost_or_stolen_card<|im_end|>"
    assert trained_text(chat, encoded.rejected) == "card_arrival<|im_end|>"
    # both sides start with the same prompt, earlier turns included
    prompt = chat.encode_prompt(pair.prompt_messages)
    assert encoded.prompt_tokens >= len(prompt)
    assert encoded.rejected.input_ids[: len(prompt)] == prompt
    assert Example.from_json(pair.to_json()) == pair


def test_a_too_long_rejected_side_is_named(chat):
    pair = Example(
        messages=(Message("user", "I lost my card."), Message("assistant", "lost")),
        rejected="word " * 200,
        source="pairs.jsonl:7",
    )
    with pytest.raises(DataError, match=r"pairs.jsonl:7: .* \(the rejected side\)"):
        chat.encode_pair(pair)
