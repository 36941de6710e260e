"""One small bad file per error class: each row is quarantined with its file:line and reason."""

from __future__ import annotations

import pytest

from tunewright.config import DataConfig
from tunewright.data.collect import Collector
from tunewright.errors import DataError

GOOD = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def chat(*turns: str) -> bytes:
    messages = ", ".join(f'{{"role": "{role}", "content": "{role} says"}}' for role in turns)
    return b'{"messages": [' + messages.encode() + b"]}\n"


# (file name, bad line(s), line of the bad row, reason, problem class, data config)
CASES = [
    (
        "utf8.jsonl",
        b'{"messages": "caf\xe9"}\n',
        2,
        "invalid UTF-8 at byte 17 of the line",
        "invalid UTF-8",
        {},
    ),
    (
        "broken.jsonl",
        b'{"messages": [}\n',
        2,
        "broken JSON: Expecting value at column 15",
        "broken JSON",
        {},
    ),
    ("array.jsonl", b"[1, 2]\n", 2, "expected a JSON object, got an array", "not an object", {}),
    (
        "type.jsonl",
        b'{"messages": [{"role": "user", "content": 5}]}\n',
        2,
        "field 'messages[0].content': expected text, got int",
        "wrong type",
        {},
    ),
    (
        "notlist.jsonl",
        b'{"messages": "hello"}\n',
        2,
        "field 'messages': expected a list, got str",
        "wrong type",
        {},
    ),
    (
        "weight.jsonl",
        b'{"messages": [{"role": "user", "content": "a", "weight": -1}]}\n',
        2,
        "field 'messages[0].weight': expected a number >= 0, got -1",
        "wrong type",
        {},
    ),
    (
        "empty.jsonl",
        b'{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}\n',
        2,
        "field 'messages[0].content': empty",
        "empty content",
        {},
    ),
    (
        "role.jsonl",
        chat("user", "robot"),
        2,
        "field 'messages[1].role': unknown role 'robot' (expected one of system, user, assistant)",
        "unknown role",
        {},
    ),
    (
        "order.jsonl",
        chat("user", "user", "assistant"),
        2,
        "field 'messages': two 'user' turns in a row (roles must alternate)",
        "roles out of order",
        {},
    ),
    (
        "first.jsonl",
        chat("assistant", "user", "assistant"),
        2,
        "field 'messages': the first non-system turn must be 'user', got 'assistant'",
        "roles out of order",
        {},
    ),
    (
        "system.jsonl",
        chat("user", "system", "assistant"),
        2,
        "field 'messages[1].role': 'system' is only allowed first",
        "roles out of order",
        {},
    ),
    (
        "noanswer.jsonl",
        chat("system", "user"),
        2,
        "field 'messages': no assistant turn to learn from",
        "no assistant turn",
        {},
    ),
    (
        "missing.jsonl",
        b'{"question": "hi"}\n',
        1,
        "field 'completion': missing (data.columns maps it to your column 'answer')",
        "missing field",
        {"format": "prompt_completion", "columns": {"prompt": "question", "completion": "answer"}},
    ),
    (
        "group.jsonl",
        GOOD,
        1,
        "field 'doc' (data.group_by): missing",
        "missing field",
        {"split": "group", "group_by": "doc"},
    ),
    (
        "cleaned.jsonl",
        b'{"messages": [{"role": "user", "content": "\\u0007"}, {"role": "assistant", "content": "x"}]}\n',
        2,
        "field 'messages[0].content': empty after cleaning",
        "empty content",
        {},
    ),
    (
        "fields.csv",
        b"prompt,completion\nhi,hello\na,b,c\n",
        3,
        "3 fields, the header has 2",
        "broken CSV",
        {},
    ),
    (
        "utf8.csv",
        b"prompt,completion\nhi,hello\ncaf\xe9,b\n",
        3,
        "invalid UTF-8 in this row",
        "invalid UTF-8",
        {},
    ),
    (
        "items.json",
        b'[{"prompt": "a", "completion": "b"},\n 7]\n',
        2,
        "expected a JSON object, got a number",
        "not an object",
        {},
    ),
    (
        "cut.json",
        b'[{"prompt": "a", "completion": "b"},\n {"prompt": "c", \n',
        2,
        "broken JSON: Expecting property name enclosed in double quotes; the rest of the file was not read",
        "broken JSON",
        {},
    ),
    (
        "utf8.txt",
        b"fine line\nbad \xff line\n",
        2,
        "invalid UTF-8 at byte 4 of the line",
        "invalid UTF-8",
        {},
    ),
]


@pytest.mark.parametrize(
    ("name", "bad", "line", "reason", "problem", "data"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_row_is_quarantined_with_location_and_reason(
    tmp_path, name, bad, line, reason, problem, data
):
    path = tmp_path / name
    good = (
        b""
        if name.endswith((".csv", ".json", ".txt")) or name in ("group.jsonl", "missing.jsonl")
        else GOOD
    )
    path.write_bytes(good + bad)
    collected = Collector(DataConfig(**data), strict=False).collect([path])
    assert len(collected.quarantine) == 1, collected.quarantine
    (q,) = collected.quarantine
    assert q.location.startswith(f"{path}:{line}")
    assert q.reason == reason
    assert q.problem == problem
    # nothing is silently dropped: every row read is either an example or quarantined
    assert collected.rows_read == len(collected.examples) + len(collected.quarantine)


def test_strict_mode_stops_at_the_first_bad_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD + chat("user", "robot") + GOOD)
    with pytest.raises(
        DataError, match=rf"{path}:2: field 'messages\[1\].role': unknown role .*strict mode"
    ):
        Collector(DataConfig(), strict=True).collect([path])


def test_unrecognised_columns_name_the_nearest_format(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\n')
    collected = Collector(DataConfig(), strict=False).collect([path])
    (q,) = collected.quarantine
    assert q.problem == "unknown format"
    assert "alpaca needs instruction+output but 'output' is missing" in q.reason
    assert "data.columns" in q.reason


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nowhere.jsonl", "data file not found"),
        ("data.xlsx", "unsupported file type '.xlsx'"),
        ("*.nothing", "the pattern matches no files"),
    ],
)
def test_unreadable_paths_are_errors_naming_the_path(tmp_path, path, message):
    if path == "data.xlsx":
        (tmp_path / path).write_bytes(b"PK")
    with pytest.raises(DataError, match=message):
        Collector(DataConfig(), strict=False).collect([tmp_path / path])


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        Collector(DataConfig(), strict=False).collect([path])


def test_a_broken_saved_dataset_names_its_folder(tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "state.json").write_text('{"_data_files": [{"filename": "missing.arrow"}]}')
    with pytest.raises(DataError, match=r"saved: not a readable `save_to_disk` dataset"):
        list(Collector(DataConfig(), strict=False).collect([folder]))


def test_json_scalar_document_is_an_error(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('"just a string"')
    with pytest.raises(DataError, match="expected a JSON array of rows or an object of splits"):
        Collector(DataConfig(), strict=False).collect([path])


def test_a_json_file_holding_one_row_is_explained(tmp_path):
    path = tmp_path / "one.json"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}')
    with pytest.raises(DataError, match="the file is a single row"):
        Collector(DataConfig(), strict=False).collect([path])
