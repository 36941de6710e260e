"""One small dataset written in every supported input format normalises to the same examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunewright.config import DataConfig
from tunewright.data.collect import Collector
from tunewright.dataset.example import Example, Message

FORMATS = Path(__file__).parents[1] / "fixtures" / "formats"
PAIRS = [
    ("How do I reset my password?", "Open Settings, then Security, then Reset password."),
    ("Where is my card?", "Cards arrive within five working days."),
    ("Can I pay in euros?", "Yes, we exchange at the daily rate."),
]
EXPECTED_CHATS = [(Message("user", q), Message("assistant", a)) for q, a in PAIRS]
DOCUMENT = "Interest is paid monthly on savings accounts.\n\nTransfers abroad take one to three working days."


def collect(path: Path, **data) -> list[Example]:
    collected = Collector(DataConfig(**data), strict=True).collect([path])
    assert collected.quarantine == []
    return collected.examples


def write_parquet(folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "alpaca.parquet"
    rows = {
        "instruction": [q for q, _ in PAIRS],
        "input": [""] * 3,
        "output": [a for _, a in PAIRS],
    }
    pq.write_table(pa.table(rows), path)
    return path


def write_saved_dataset(folder: Path) -> Path:
    from datasets import Dataset, DatasetDict

    messages = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in PAIRS
    ]
    splits = DatasetDict({"train": Dataset.from_dict({"messages": messages[:2]}),
                          "test": Dataset.from_dict({"messages": messages[2:]})})  # fmt: skip
    splits.save_to_disk(str(folder / "saved"))
    return folder / "saved"


def write_mixed_folder(folder: Path) -> Path:
    mixed = folder / "mixed" / "nested"
    mixed.mkdir(parents=True)
    lines = (FORMATS / "messages.jsonl").read_text().splitlines()
    (mixed.parent / "a.jsonl").write_text(lines[0] + "\n")
    (mixed / "b.jsonl").write_text("\n".join(lines[1:]) + "\n")
    return folder / "mixed"


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("messages.jsonl", {}),
        ("messages.json", {}),
        ("splits.json", {}),
        ("prompt_completion.csv", {}),
        ("alpaca.tsv", {}),
        ("sharegpt.jsonl", {}),
        ("renamed.csv", {"prompt": "question", "completion": "answer"}),
        ("alpaca.parquet", {}),
        ("saved", {}),
        ("mixed", {}),
        ("*.jsonl glob", {}),
    ],
)
def test_every_chat_format_normalises_to_the_same_examples(name, columns, tmp_path):
    if name == "alpaca.parquet":
        path = write_parquet(tmp_path)
    elif name == "saved":
        path = write_saved_dataset(tmp_path)
    elif name == "mixed":
        path = write_mixed_folder(tmp_path)
    elif name.endswith("glob"):
        write_mixed_folder(tmp_path)
        path = tmp_path / "mixed" / "**" / "*.jsonl"
    else:
        path = FORMATS / name
    examples = collect(path, columns=columns)
    assert [e.messages for e in examples] == EXPECTED_CHATS
    assert all(e.source.startswith(str(path).split("*")[0]) for e in examples)


@pytest.mark.parametrize("name", ["document.txt", "document.md", "document.html"])
def test_documents_become_the_same_raw_text(name):
    (example,) = collect(FORMATS / name)
    assert example.text == DOCUMENT and not example.is_chat
    assert example.source == f"{FORMATS / name}:1"


def test_text_and_label_with_mapped_columns(tmp_path):
    path = tmp_path / "intents.csv"
    path.write_text("text,category\nWhere is my card?,card_arrival\n")
    (example,) = collect(path, columns={"label": "category"})
    assert example.label == "card_arrival"
    assert example.messages == (
        Message("user", "Where is my card?"),
        Message("assistant", "card_arrival"),
    )


def test_per_message_weight_is_kept(tmp_path):
    path = tmp_path / "weighted.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "weight": 0},
        ]
    }
    path.write_text(json.dumps(row) + "\n")
    (example,) = collect(path)
    assert example.messages[1].weight == 0.0


def test_text_file_with_other_columns_gets_a_note(tmp_path):
    path = tmp_path / "intents.csv"
    path.write_text("text,category\nWhere is my card?,card_arrival\n")
    collected = Collector(DataConfig(), strict=False).collect([path])
    (source,) = collected.sources
    assert source["format"] == "text" and "data.columns: {label: <column>}" in source["note"]


def test_unsupported_files_in_a_folder_are_listed_not_ignored(tmp_path):
    shutil.copy(FORMATS / "messages.jsonl", tmp_path / "chat.jsonl")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    (tmp_path / ".hidden.jsonl").write_text("not read")
    collected = Collector(DataConfig(), strict=True).collect([tmp_path])
    assert len(collected.examples) == 3
    assert collected.skipped_files == [str(tmp_path / "notes.pdf")]
