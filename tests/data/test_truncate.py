"""`data.truncate`: over-long chats keep their answer and system prompt whole and lose user text,
on the side asked for, until they fit `data.max_seq_len` exactly; through `prepare`, test rows
included, counted in the summary, the card and the console."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest
from rich.console import Console

from tunewright.config import RunConfig
from tunewright.data.prepare import prepare
from tunewright.data.quarantine import RowError
from tunewright.data.token_stats import TokenMeter
from tunewright.data.truncate import MIDDLE_MARKER, Truncator
from tunewright.dataset.example import Example, Message
from tunewright.dataset.prepared import load_prepared
from tunewright.dataset.tokenize import ChatTokenizer, TooLongError
from tunewright.models import load_tokenizer

SIDES = ["input_end", "input_start", "input_middle"]
LIMIT = 64
SYSTEM = "Name the intent."
WORDS = " ".join(f"word{i}" for i in range(150))


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    return ChatTokenizer(load_tokenizer(str(tiny_model_dir)), SYSTEM, max_seq_len=LIMIT)


@pytest.fixture(scope="module")
def wide(tiny_model_dir):
    """Room for a few turns besides the long one (the tiny tokenizer's words are several tokens)."""
    return ChatTokenizer(load_tokenizer(str(tiny_model_dir)), SYSTEM, max_seq_len=2 * LIMIT)


def shorten(chat: ChatTokenizer, side: str, example: Example):
    with pytest.raises(TooLongError) as too_long:
        chat.encode_example(example)
    return Truncator(chat, side).shorten(example, too_long.value.length)


def assert_kept_side(side: str, original: str, text: str) -> None:
    """`text` is the part of `original` that `side` keeps, cut between words."""
    if side == "input_end":
        assert original.startswith(text) and original[len(text)] == " ", text
    elif side == "input_start":
        assert original.endswith(text) and original[-len(text) - 1] == " ", text
    else:
        head, tail = text.split(MIDDLE_MARKER)
        assert original.startswith(head) and original[len(head)] == " ", text
        assert original.endswith(tail) and original[-len(tail) - 1] == " ", text


@pytest.mark.parametrize("side", SIDES)
def test_each_side_keeps_its_part_of_the_user_text_and_fits_exactly(chat, side):
    answer = Message("assistant", "lost_or_stolen_card")
    example = Example(messages=(Message("user", WORDS), answer), label=answer.content)
    cut, encoded = shorten(chat, side, example)
    short = cut.apply(example)
    assert len(encoded.input_ids) <= LIMIT
    assert len(encoded.input_ids) > LIMIT - 8  # cut to fit, not far more
    assert chat.encode_example(short).input_ids == encoded.input_ids  # what training will see
    assert short.messages[1] == answer and short.label == answer.content
    rendered = chat.tokenizer.decode(encoded.input_ids)
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\nlost_or_stolen_card<|im_end|>\n")
    assert_kept_side(side, WORDS, short.messages[0].content)
    unlimited = ChatTokenizer(chat.tokenizer, SYSTEM, max_seq_len=1 << 20)
    full = len(unlimited.encode_example(example).input_ids)
    assert cut.tokens_removed == full - len(encoded.input_ids) > 0


@pytest.mark.parametrize("side", SIDES)
def test_shortened_examples_always_fit_whatever_the_text(chat, side):
    """Re-tokenising a cut text can merge differently at its edges: the result must still fit."""
    rng = random.Random(side)
    alphabet = "abcdefghij klmno  pqrst éüß€ 日本語 😀🚀 .,;!?\n'\"" + "0123456789"
    for _ in range(25):
        text = "x" + "".join(rng.choice(alphabet) for _ in range(rng.randint(120, 500))) + "y"
        example = Example(messages=(Message("user", text), Message("assistant", "card_arrival")))
        try:
            chat.encode_example(example)
            continue  # fits already
        except TooLongError as e:
            length = e.length
        shortened = Truncator(chat, side).shorten(example, length)
        assert shortened is not None, text
        cut, encoded = shortened
        assert len(encoded.input_ids) <= LIMIT
        assert chat.encode_example(cut.apply(example)).input_ids == encoded.input_ids


def test_multi_turn_cuts_only_the_long_user_turn(wide):
    """Short questions and every answer stay whole; the long document is what gets cut."""
    messages = (
        Message("user", "which card?"),
        Message("assistant", "card_arrival"),
        Message("user", WORDS),
        Message("assistant", "exchange_rate"),
        Message("user", "and now?"),
        Message("assistant", "top_up_failed"),
    )
    example = Example(messages=messages)
    cut, encoded = shorten(wide, "input_end", example)
    short = cut.apply(example)
    assert [index for index, _, _ in cut.turns] == [2]
    assert [m for k, m in enumerate(short.messages) if k != 2] == [
        m for k, m in enumerate(messages) if k != 2
    ]
    assert_kept_side("input_end", WORDS, short.messages[2].content)
    assert len(encoded.input_ids) <= 2 * LIMIT


def test_multi_turn_cuts_the_longest_user_turns_towards_equal_length(wide):
    other = " ".join(f"term{i}" for i in range(60))
    messages = (
        Message("user", WORDS),
        Message("assistant", "card_arrival"),
        Message("user", other),
        Message("assistant", "exchange_rate"),
    )
    example = Example(messages=messages)
    cut, encoded = shorten(wide, "input_start", example)
    short = cut.apply(example)
    assert [index for index, _, _ in cut.turns] == [0, 2]  # the shorter turn is over the cap too

    def tokens(text: str) -> int:
        return len(wide.tokenizer(text, add_special_tokens=False)["input_ids"])

    first, second = tokens(short.messages[0].content), tokens(short.messages[2].content)
    assert (
        abs(first - second) <= 8
    )  # one cap for both; cuts move to a word boundary (~6 tokens here)
    assert first + second < tokens(other) < tokens(WORDS)
    assert_kept_side("input_start", WORDS, short.messages[0].content)
    assert_kept_side("input_start", other, short.messages[2].content)
    assert short.messages[1::2] == messages[1::2]
    assert len(encoded.input_ids) <= 2 * LIMIT


def test_an_answer_too_long_on_its_own_is_not_shortened(chat):
    example = Example(messages=(Message("user", "hi"), Message("assistant", WORDS)), source="f:3")
    assert shorten(chat, "input_end", example) is None
    with pytest.raises(RowError, match=rf"^\d+ tokens, over data.max_seq_len={LIMIT}$") as e:
        TokenMeter(chat, "input_end").encode(example)
    assert e.value.problem == "over the token limit"


# --- through prepare ------------------------------------------------------------------------


def long_text(i: int) -> str:
    return f"doc{i} " + " ".join(f"word{k}" for k in range(120))


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def labelled(tmp_path: Path) -> tuple[Path, Path, int, int]:
    """Train and test CSVs in which every third row is far over the limit."""
    labels = ["card_arrival", "exchange_rate"]
    train = [(long_text(i) if i % 3 == 0 else f"short question {i}", labels[i % 2]) for i in range(30)]  # fmt: skip
    test = [(long_text(100 + i) if i % 3 == 0 else f"other question {i}", labels[i % 2]) for i in range(9)]  # fmt: skip
    return (
        write_csv(tmp_path / "train.csv", train),
        write_csv(tmp_path / "test.csv", test),
        10,
        3,
    )


def config(tmp_path: Path, model: Path, **data) -> RunConfig:
    data = {"system_prompt": SYSTEM, "val_fraction": 0.1, "max_seq_len": LIMIT, **data}
    return RunConfig.model_validate(
        {"name": "run", "output_dir": str(tmp_path), "model": {"name": str(model)}, "data": data}
    )


def recorded() -> Console:
    return Console(record=True, width=300, file=io.StringIO())


def assert_every_example_fits(dataset, model: Path) -> None:
    chat = ChatTokenizer(load_tokenizer(str(model)), SYSTEM, max_seq_len=LIMIT)
    for split in ("train", "val", "test"):
        for example in getattr(dataset, split):
            assert len(chat.encode_example(example).input_ids) <= 2 * LIMIT


@pytest.mark.parametrize("side", SIDES)
def test_prepare_shortens_long_labelled_rows_test_split_included(tmp_path, tiny_model_dir, side):
    train, test, long_train, long_test = labelled(tmp_path)
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(train)], test_files=[str(test)],
                 truncate=side)  # fmt: skip
    console = recorded()
    summary = prepare(cfg, console=console).summary
    assert summary["quarantined"] == 0
    assert summary["splits"]["test"] == 9
    truncated = summary["truncated"]
    assert truncated["mode"] == side
    assert truncated["examples"] == long_train + long_test
    assert truncated["by_split"]["test"] == long_test
    assert truncated["by_split"]["train"] + truncated["by_split"]["val"] == long_train
    assert truncated["tokens_removed"] > 100 * (long_train + long_test)
    assert json.loads((cfg.run_dir / "data" / "summary.json").read_text())["truncated"] == truncated

    dataset = load_prepared(cfg.run_dir / "data")
    assert_every_example_fits(dataset, tiny_model_dir)
    for example in dataset.test:
        user, answer = example.messages
        assert answer.content == example.label  # the answer is the label, whole
        original = long_text(100 + int(example.source.rsplit(":", 1)[1]) - 2)
        if example.source.endswith((":2", ":5", ":8")):  # the long rows (row 1 is the header)
            assert_kept_side(side, original, user.content)
    card = (cfg.run_dir / "data" / "card.md").read_text()
    assert f"**{long_train + long_test} examples were over the limit" in card
    assert f"{long_test} test" in card and f"data.truncate: {side}" in card
    report = console.export_text()
    assert f"{long_train + long_test} example(s) over data.max_seq_len={LIMIT} shortened" in report


@pytest.mark.parametrize("side", SIDES)
def test_prepare_shortens_long_chats_keeping_system_and_answers(tmp_path, tiny_model_dir, side):
    system = Message("system", "Answer briefly.")
    rows = []
    for i in range(20):
        messages = [system, Message("user", f"question {i}"), Message("assistant", f"answer {i}")]
        if i % 2 == 0:
            messages += [Message("user", long_text(i)), Message("assistant", f"summary {i}")]
        rows.append({"messages": [{"role": m.role, "content": m.content} for m in messages]})
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(data)], test_fraction=0.2, max_seq_len=2 * LIMIT,
                 truncate=side, system_prompt=None)  # fmt: skip
    summary = prepare(cfg, console=Console(quiet=True)).summary
    assert summary["quarantined"] == 0
    assert summary["truncated"]["examples"] == 10
    dataset = load_prepared(cfg.run_dir / "data")
    examples = dataset.train + dataset.val + dataset.test
    assert len(examples) == 20
    for example in examples:
        i = int(example.source.rsplit(":", 1)[1]) - 1
        expected = rows[i]["messages"]
        assert len(example.messages) == len(expected)
        for k, (message, original) in enumerate(zip(example.messages, expected)):
            if k == 3:  # the long user turn
                assert_kept_side(side, original["content"], message.content)
            else:
                assert (message.role, message.content) == (original["role"], original["content"])
        chat = ChatTokenizer(load_tokenizer(str(tiny_model_dir)), None, max_seq_len=2 * LIMIT)
        assert len(chat.encode_example(example).input_ids) <= 2 * LIMIT


def test_prepare_still_quarantines_a_row_whose_answer_alone_is_too_long(tmp_path, tiny_model_dir):
    train, test, long_train, long_test = labelled(tmp_path)
    rows = list(csv.reader(train.open()))[1:] + [("short question", long_text(7))]
    write_csv(train, [tuple(r) for r in rows])
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(train)], test_files=[str(test)],
                 truncate="input_end")  # fmt: skip
    summary = prepare(cfg, console=Console(quiet=True)).summary
    assert summary["quarantined_by_reason"] == {"over the token limit": 1}
    (entry,) = [json.loads(x) for x in (cfg.run_dir / "data" / "quarantine.jsonl").open()]
    assert entry["location"] == f"{train}:32"
    assert entry["reason"].endswith(f"tokens, over data.max_seq_len={LIMIT}")
    assert summary["truncated"]["examples"] == long_train + long_test


def test_truncate_none_quarantines_as_before_and_says_how_to_keep_them(tmp_path, tiny_model_dir):
    train, test, long_train, long_test = labelled(tmp_path)
    cfg = config(tmp_path, tiny_model_dir, train_files=[str(train)], test_files=[str(test)])
    assert cfg.data.truncate == "none"
    console = recorded()
    summary = prepare(cfg, console=console).summary
    assert summary["quarantined_by_reason"] == {"over the token limit": long_train + long_test}
    assert summary["splits"]["test"] == 9 - long_test
    assert summary["truncated"] == {
        "mode": "none",
        "examples": 0,
        "by_split": {"train": 0, "val": 0, "test": 0},
        "tokens_removed": 0,
    }
    assert "shortened" not in (cfg.run_dir / "data" / "card.md").read_text()
    assert "set data.truncate: input_end" in console.export_text()
