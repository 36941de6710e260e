"""Preference pairs (DPO/ORPO data): the three input formats, their bad rows, and the prepared
dataset keeping each pair's rejected answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from tunewright.config import DataConfig, RunConfig
from tunewright.data.collect import Collector
from tunewright.data.formats import detect_format
from tunewright.data.prepare import prepare
from tunewright.data.quarantine import RowError
from tunewright.dataset.example import Example, Message
from tunewright.dataset.store import read_split, write_split

QUIET = Console(quiet=True)
Q, CHOSEN, REJECTED = "How do I reset my password?", "Open Settings, then Security.", "No idea."
EXPECTED = Example(messages=(Message("user", Q), Message("assistant", CHOSEN)), rejected=REJECTED)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def collect(path: Path, strict: bool = True, **data):
    return Collector(DataConfig(**data), strict=strict).collect([path])


def same(example: Example, expected: Example = EXPECTED) -> bool:
    return (example.messages, example.rejected) == (expected.messages, expected.rejected)


ROWS = {
    "preference": {"prompt": Q, "chosen": CHOSEN, "rejected": REJECTED},
    "preference_messages": {
        "prompt": [user(Q)],
        "chosen": [assistant(CHOSEN)],
        "rejected": [assistant(REJECTED)],
    },
    "chosen_rejected": {
        "chosen": [user(Q), assistant(CHOSEN)],
        "rejected": [user(Q), assistant(REJECTED)],
    },
    "openai_preference": {
        "input": {"messages": [user(Q)]},
        "preferred_output": [assistant(CHOSEN)],
        "non_preferred_output": [assistant(REJECTED)],
    },
}


@pytest.mark.parametrize("name", list(ROWS))
def test_each_format_is_detected_and_normalised_to_a_pair(tmp_path, name):
    row = ROWS[name]
    assert detect_format(set(row), "x:1") == name.removesuffix("_messages")
    collected = collect(write_jsonl(tmp_path / "pairs.jsonl", [row]))
    (example,) = collected.examples
    assert same(example) and example.is_preference
    assert example.source == f"{tmp_path / 'pairs.jsonl'}:1"


def test_multi_turn_chats_keep_the_shared_turns_as_the_prompt(tmp_path):
    history = [{"role": "system", "content": "Be brief."}, user("hi"), assistant("hello"), user(Q)]
    rows = [
        {"chosen": [*history, assistant(CHOSEN)], "rejected": [*history, assistant(REJECTED)]},
        {"prompt": history, "chosen": [assistant(CHOSEN)], "rejected": REJECTED},
    ]
    for k, row in enumerate(rows):  # the format is detected per file
        (example,) = collect(write_jsonl(tmp_path / f"chats{k}.jsonl", [row])).examples
        assert [m.content for m in example.prompt_messages] == [m["content"] for m in history]
        assert example.reference == CHOSEN and example.rejected == REJECTED


def test_detection_stays_unambiguous():
    assert detect_format({"prompt", "completion"}, "x:1") == "prompt_completion"
    assert detect_format({"prompt", "chosen", "rejected", "id"}, "x:1") == "preference"
    with pytest.raises(RowError, match="several formats"):
        detect_format({"prompt", "completion", "chosen", "rejected"}, "x:1")
    with pytest.raises(RowError, match="chosen\\+rejected"):
        detect_format({"chosen"}, "x:1")


# (row, reason, problem class)
BAD = [
    (
        {"prompt": Q, "chosen": CHOSEN, "rejected": CHOSEN},
        "field 'rejected': identical to 'chosen' (nothing to prefer)",
        "identical chosen and rejected",
    ),
    ({"prompt": Q, "chosen": " ", "rejected": REJECTED}, "field 'chosen': empty", "empty content"),
    (
        {"prompt": Q, "chosen": CHOSEN, "rejected": []},
        "field 'rejected': no messages",
        "empty content",
    ),
    (
        {"prompt": Q, "chosen": CHOSEN, "rejected": None},
        "field 'rejected': missing",
        "missing field",
    ),
    (
        {"chosen": [user(Q), assistant(CHOSEN)], "rejected": [user(Q)]},
        "field 'rejected': the last message must be the assistant's answer, got 'user'",
        "side not an assistant answer",
    ),
    (
        {"chosen": [user(Q), assistant(CHOSEN)], "rejected": [user("Other?"), assistant(REJECTED)]},
        "field 'rejected': differs from 'chosen' before the final answer (message 0); "
        "both sides must answer the same conversation",
        "sides differ before the answer",
    ),
    (
        {
            "input": {"messages": [user(Q)]},
            "preferred_output": [assistant(CHOSEN)],
            "non_preferred_output": [{"role": "bot", "content": REJECTED}],
        },
        "field 'non_preferred_output[0].role': unknown role 'bot' (expected one of system, user, assistant)",
        "unknown role",
    ),
    (
        # the data stage's turn checks still apply to prompt + chosen
        {"prompt": [assistant("hi")], "chosen": CHOSEN, "rejected": REJECTED},
        "field 'chosen': the first non-system turn must be 'user', got 'assistant'",
        "roles out of order",
    ),
]


def config(tmp_path: Path, model: Path, train: Path, **data) -> RunConfig:
    data = {"train_files": [str(train)], "max_seq_len": 128, "val_fraction": 0.2, **data}
    return RunConfig.model_validate(
        {"name": "run", "output_dir": str(tmp_path), "model": {"name": str(model)}, "data": data}
    )


def pairs(n: int, prompts: int | None = None) -> list[dict]:
    prompts = prompts or n
    return [
        {
            "prompt": f"Question {i % prompts}?",
            "chosen": f"Good answer {i}.",
            "rejected": f"Bad {i}.",
        }
        for i in range(n)
    ]


def quarantined(prepared) -> list[dict]:
    path = prepared.folder / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bad_pairs_are_quarantined_with_file_line_and_reason(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs(20))
    # one file per bad row: the format is detected per file, and each row tests its own format
    bad = [write_jsonl(tmp_path / f"bad{k}.jsonl", [row]) for k, (row, _, _) in enumerate(BAD)]
    cfg = config(tmp_path, tiny_model_dir, train, test_fraction=0.2)
    cfg.data.train_files += [str(path) for path in bad]
    entries = quarantined(prepare(cfg, console=QUIET))
    assert [e["location"] for e in entries] == [f"{path}:1" for path in bad]
    assert [e["reason"] for e in entries] == [reason for _, reason, _ in BAD]
    problems = Collector(DataConfig(), strict=False).collect(bad).quarantine
    assert [q.problem for q in problems] == [problem for _, _, problem in BAD]


@pytest.mark.parametrize(
    ("field", "side", "truncate"),
    [
        ("rejected", "rejected", "none"),
        ("chosen", "chosen", "none"),
        ("prompt", "chosen", "input_end"),
    ],
)
def test_an_over_long_side_is_quarantined_naming_the_side(
    tmp_path, tiny_model_dir, field, side, truncate
):
    rows = pairs(20)
    rows[3][field] = "word " * 400
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    prepared = prepare(config(tmp_path, tiny_model_dir, train, truncate=truncate), console=QUIET)
    (entry,) = quarantined(prepared)  # pairs are never shortened, even with data.truncate
    assert entry["location"] == f"{train}:4"
    assert "over data.max_seq_len=128" in entry["reason"] and f"the {side} side" in entry["reason"]


def test_prepared_pairs_keep_rejected(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs(30))
    prepared = prepare(config(tmp_path, tiny_model_dir, train), console=QUIET)
    examples = prepared.train + prepared.val + prepared.test
    assert len(examples) == 30
    for example in examples:
        i = int(example.reference.split()[-1].rstrip("."))
        assert example.rejected == f"Bad {i}."
        assert example.prompt_messages[-1].content == f"Question {i}?"


def test_parquet_round_trip_keeps_rejected_and_reads_older_folders(tmp_path):
    import pyarrow.parquet as pq

    plain = Example(messages=(Message("user", "a"), Message("assistant", "b")), source="f:2")
    path = tmp_path / "train.parquet"
    write_split(path, [EXPECTED, plain])
    back = read_split(path)
    assert back == [EXPECTED, plain]
    assert back[0].rejected == REJECTED and back[1].rejected is None
    older = tmp_path / "older.parquet"  # written before the column existed
    pq.write_table(pq.read_table(path).drop_columns(["rejected"]), older)
    assert [e.rejected for e in read_split(older)] == [None, None]


def test_pairs_sharing_a_prompt_never_straddle_splits(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs(60, prompts=12))
    prepared = prepare(config(tmp_path, tiny_model_dir, train, test_fraction=0.25), console=QUIET)
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for example in prepared.split(split):
            prompt = example.prompt_messages[-1].content
            assert seen.setdefault(prompt, split) == split, prompt
    assert len(set(seen.values())) == 3


def test_pairs_differing_only_in_rejected_are_not_duplicates(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": Q, "chosen": CHOSEN, "rejected": f"Wrong answer number {i}."} for i in range(6)
    ]
    rows += pairs(20)
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    prepared = prepare(config(tmp_path, tiny_model_dir, train, dedup="exact"), console=QUIET)
    assert len(prepared.train + prepared.val + prepared.test) == 26
    rows.append(dict(rows[0]))  # a true repeat is still removed
    write_jsonl(train, rows)
    prepared = prepare(config(tmp_path, tiny_model_dir, train, dedup="exact"), console=QUIET)
    assert len(prepared.train + prepared.val + prepared.test) == 26


def test_cleaning_and_pii_apply_to_rejected(tmp_path):
    row = {"prompt": Q, "chosen": CHOSEN, "rejected": "Mail  bob@example.com  \u0007now."}
    (example,) = collect(write_jsonl(tmp_path / "p.jsonl", [row]), pii_redact=["EMAIL"]).examples
    assert "bob@example.com" not in example.rejected and "\u0007" not in example.rejected


def test_summary_card_and_inspect_mention_pairs(tmp_path, tiny_model_dir):
    from tunewright.data.inspect import inspect_examples
    from tunewright.dataset.tokenize import ChatTokenizer
    from tunewright.models import load_tokenizer

    train = write_jsonl(tmp_path / "pairs.jsonl", pairs(20, prompts=5))
    prepared = prepare(config(tmp_path, tiny_model_dir, train), console=QUIET)
    assert prepared.summary["preference_pairs"] == {"collected": 20, "grouped_by_prompt": True}
    assert "Preference pairs" in (prepared.folder / "card.md").read_text()
    console = Console(record=True, width=200)
    chat = ChatTokenizer(load_tokenizer(str(tiny_model_dir)), None, max_seq_len=128)
    report = inspect_examples(chat, prepared.train[:1], console, show=1)
    shown = console.export_text()
    assert "·  chosen  ·" in shown and "·  rejected  ·" in shown
    assert prepared.train[0].rejected in shown and report.eos_untrained == []


def test_hh_rlhf_transcript_strings_are_read_as_chats(tmp_path):
    history = f"\n\nHuman: hi\n\nAssistant: hello\n\nHuman: {Q}"
    row = {
        "chosen": f"{history}\n\nAssistant: {CHOSEN}",
        "rejected": f"{history}\n\nAssistant: {REJECTED}",
    }
    (example,) = collect(write_jsonl(tmp_path / "hh.jsonl", [row])).examples
    assert [m.content for m in example.prompt_messages] == ["hi", "hello", Q]
    assert same(example, EXPECTED) is False and example.reference == CHOSEN
    assert example.rejected == REJECTED
    bad = {"chosen": "just text", "rejected": f"{history}\n\nAssistant: {REJECTED}"}
    (q,) = collect(write_jsonl(tmp_path / "bad.jsonl", [bad]), strict=False).quarantine
    assert q.location.endswith("bad.jsonl:1") and q.reason.startswith("field 'chosen': expected")
