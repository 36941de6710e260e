"""Readers: stream rows out of data files, each tagged with `file:line` (or `file:row N`).

A reader never raises on a bad row: it yields a `Row` with `error` set, so preparation can
quarantine it and go on. Only an unreadable file (missing, unknown type) raises `DataError`.
Rows are streamed so memory stays bounded however large the input.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunewright.errors import DataError

# CSV fields can legitimately hold whole documents.
csv.field_size_limit(64 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class Row:
    location: str  # "path:line" for line-based files, "path:row N" otherwise
    data: dict | None
    error: str | None = None


def _read_jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            loc = f"{path}:{line_no}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Row(loc, None, f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield Row(loc, None, f"broken JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(value, dict):
                yield Row(loc, None, f"expected a JSON object, got {type(value).__name__}")
                continue
            yield Row(loc, value)


def _read_json(path: Path) -> Iterator[Row]:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: broken JSON: {e.msg} at column {e.colno}") from None
    if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
        items = [(f"{path}:{split}[{i}]", item) for split, v in value.items() for i, item in enumerate(v)]
    elif isinstance(value, list):
        items = [(f"{path}:[{i}]", item) for i, item in enumerate(value)]
    else:
        raise DataError(f"{path}: expected a JSON array of rows or an object of splits")
    for loc, item in items:
        if isinstance(item, dict):
            yield Row(loc, item)
        else:
            yield Row(loc, None, f"expected a JSON object, got {type(item).__name__}")


def _read_csv(path: Path, delimiter: str) -> Iterator[Row]:
    with path.open("r", encoding="utf-8", newline="", errors="strict") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            for record in reader:
                # the header is line 1; reader.line_num is the line where this record ended
                loc = f"{path}:{reader.line_num}"
                if None in record:
                    yield Row(loc, None, f"{len(record[None]) + len(reader.fieldnames)} fields, header has {len(reader.fieldnames)}")
                    continue
                yield Row(loc, {k: v for k, v in record.items() if k is not None})
        except UnicodeDecodeError as e:
            yield Row(f"{path}:{reader.line_num + 1}", None, f"invalid UTF-8 at byte {e.start}")
        except csv.Error as e:
            yield Row(f"{path}:{reader.line_num}", None, f"broken CSV: {e}")


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            index += 1
            yield Row(f"{path}:row {index}", record)


READERS = {
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".json": _read_json,
    ".csv": lambda p: _read_csv(p, ","),
    ".tsv": lambda p: _read_csv(p, "\t"),
    ".parquet": _read_parquet,
}


def read_rows(path: Path) -> Iterator[Row]:
    """Stream the rows of one data file; the reader is chosen by the file's suffix."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}' (supported: {', '.join(sorted(READERS))})"
        )
    return reader(path)
