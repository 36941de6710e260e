"""Readers: stream rows out of data files, each tagged with `file:line` (or `file:row N`).

A reader never raises on a bad row: it yields a `Row` with `error` set, so preparation can
quarantine it and go on. Only an unreadable file (missing, unknown type, not Parquet) raises
`DataError`. Rows are streamed so memory stays bounded however large the input: JSON arrays are
parsed item by item from a window of the file, Parquet and Arrow files batch by batch.

Text, Markdown and HTML documents are read by `tunewright.data.documents`; which files a recipe
path names (folders, globs, `save_to_disk` datasets) is decided by `tunewright.data.sources`.
"""

from __future__ import annotations

import csv
import json
import json.scanner
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

from tunewright.data.quarantine import Problem
from tunewright.errors import DataError

# CSV fields can legitimately hold whole documents.
csv.field_size_limit(64 * 1024 * 1024)

_JSON_CHUNK_CHARS = 1 << 20
_JSON_MAX_ITEM_CHARS = 64 << 20  # one row bigger than this is a broken file, not a row
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of invalid UTF-8 bytes
_DECODER = json.JSONDecoder()
_SCAN_ONCE = json.scanner.make_scanner(_DECODER)  # (text, index) -> (value, end); the C one


class Row(NamedTuple):  # a tuple, not a dataclass: one is made per input row
    location: str  # "path:line" for line-based files, "path:row N" otherwise
    data: dict | None
    error: str | None = None
    problem: Problem | None = None  # set with `error`


def read_jsonl(path: Path) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped."""
    with path.open("rb") as f:
        yield from jsonl_rows(f, f"{path}:", 1)


def jsonl_rows(lines: Iterable[bytes], prefix: str, first_line: int) -> Iterator[Row]:
    """Rows of JSONL lines (with or without their newline), located `{prefix}{line number}`."""
    scan = _SCAN_ONCE
    for line_no, raw in enumerate(lines, start=first_line):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Row(
                f"{prefix}{line_no}",
                None,
                f"invalid UTF-8 at byte {e.start} of the line",
                "invalid UTF-8",
            )
            continue
        # The C scanner straight away (json.loads adds two Python calls a line); anything but
        # one value then blank space goes through json.loads for its exact error.
        try:
            value, end = scan(text, 0)
            if end != len(text) and not text[end:].isspace():
                raise ValueError
        except (StopIteration, ValueError):
            if not text or text.isspace():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield Row(
                    f"{prefix}{line_no}",
                    None,
                    f"broken JSON: {e.msg} at column {e.colno}",
                    "broken JSON",
                )
                continue
        if type(value) is not dict:
            yield Row(
                f"{prefix}{line_no}",
                None,
                f"expected a JSON object, got {_json_type(value)}",
                "not an object",
            )
            continue
        yield Row(f"{prefix}{line_no}", value)


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


class _JsonWindow:
    """A JSON document read in chunks: parse values one at a time, keep only what is unparsed.

    Invalid UTF-8 bytes are decoded as lone surrogates and their offsets remembered, so the one
    row that holds them is reported and the rest of the file still reads.
    """

    def __init__(self, f: IO[str]) -> None:
        self._f = f
        self._buf = ""
        self._pos = 0
        self._base = 0  # absolute offset of _buf[0]
        self._line = 1  # line of _buf[0]
        self._eof = False
        self._bad: list[int] = []  # absolute offsets of invalid bytes

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._f.read(_JSON_CHUNK_CHARS)
        if not chunk:
            self._eof = True
            return False
        self._line += self._buf.count("\n", 0, self._pos)
        self._base += self._pos
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        offset = self._base + len(self._buf) - len(chunk)
        self._bad.extend(offset + m.start() for m in _SURROGATE.finditer(chunk))
        return True

    @property
    def line(self) -> int:
        return self._line + self._buf.count("\n", 0, self._pos)

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file), not consumed."""
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()
            if self._pos < len(self._buf) or not self._more():
                return self._buf[self._pos : self._pos + 1]

    def take(self, char: str) -> bool:
        if self.peek() == char:
            self._pos += 1
            return True
        return False

    def value(self) -> tuple[object, bool]:
        """The next JSON value, and whether its text holds invalid UTF-8."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as e:
                # Only an error at the end of the window can be cured by reading more.
                at_end = e.pos >= len(self._buf) - 1 or e.msg.startswith("Unterminated string")
                if at_end and len(self._buf) - self._pos < _JSON_MAX_ITEM_CHARS and self._more():
                    continue
                raise
            if end == len(self._buf) and self._more():
                continue  # a number may go on in the next chunk
            start, self._pos = self._base + self._pos, end
            bad = bisect_left(self._bad, start) < bisect_left(self._bad, self._base + end)
            return value, bad

    def error(self, expected: str) -> json.JSONDecodeError:
        return json.JSONDecodeError(f"expected {expected}", self._buf, self._pos)


def read_json(path: Path) -> Iterator[Row]:
    """A JSON array of rows, or an object of splits (`{"train": [...], "test": [...]}`)."""
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        window = _JsonWindow(f)
        try:
            if window.take("["):
                yield from _json_items(window, path, "")
            elif window.take("{"):
                yield from _json_splits(window, path)
            else:
                raise DataError(f"{path}: expected a JSON array of rows or an object of splits")
            if window.peek() != "":
                raise window.error("the end of the file")
        except json.JSONDecodeError as e:
            yield Row(
                f"{path}:{window.line}",
                None,
                f"broken JSON: {e.msg}; the rest of the file was not read",
                "broken JSON",
            )


def _json_items(window: _JsonWindow, path: Path, split: str) -> Iterator[Row]:
    index = 0
    if window.take("]"):
        return
    while True:
        window.peek()  # past the blank space, so the line is the item's own
        loc = f"{path}:{window.line} ({split}item {index})"
        value, bad_bytes = window.value()
        if bad_bytes:
            yield Row(loc, None, "invalid UTF-8 in this item", "invalid UTF-8")
        elif isinstance(value, dict):
            yield Row(loc, value)
        else:
            yield Row(
                loc, None, f"expected a JSON object, got {_json_type(value)}", "not an object"
            )
        index += 1
        if window.take("]"):
            return
        if not window.take(","):
            raise window.error("',' or ']' after an item")


def _json_splits(window: _JsonWindow, path: Path) -> Iterator[Row]:
    if window.take("}"):
        return
    while True:
        split, _ = window.value()
        if not isinstance(split, str) or not window.take(":"):
            raise window.error("a split name and ':'")
        if split in ("messages", "conversations"):
            raise DataError(
                f"{path}: the file is a single row (its '{split}' is a field, not a split); "
                "write rows as JSONL, or as a JSON array of rows"
            )
        if not window.take("["):
            raise DataError(
                f"{path}:{window.line}: '{split}' is not a list of rows; expected a JSON array "
                "of rows or an object of splits (each a list of rows)"
            )
        yield from _json_items(window, path, f"{split} ")
        if window.take("}"):
            return
        if not window.take(","):
            raise window.error("',' or '}' after a split")


def _decoded_lines(f: IO[bytes], bad_lines: set[int]) -> Iterator[str]:
    """Lines as text; a line with invalid UTF-8 is decoded with surrogates and noted."""
    for line_no, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(line_no)
            yield raw.decode("utf-8", errors="surrogateescape")


def read_csv(path: Path, delimiter: str = ",") -> Iterator[Row]:
    """CSV or TSV with a header row; quoted fields may span lines."""
    bad_lines: set[int] = set()
    with path.open("rb") as f:
        lines = _decoded_lines(f, bad_lines)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Row(f"{path}:1", None, f"broken CSV header: {e}", "broken CSV")
            return
        if 1 in bad_lines:
            raise DataError(f"{path}:1: invalid UTF-8 in the header row")
        yield from _csv_records(reader, header, path, bad_lines)


def _csv_records(reader, header: list[str], path: Path, bad_lines: set[int]) -> Iterator[Row]:
    first_line = 2
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Row(f"{path}:{reader.line_num}", None, f"broken CSV: {e}", "broken CSV")
            first_line = reader.line_num + 1
            continue
        # reader.line_num is the line where this record ended; a quoted field can span lines
        loc = f"{path}:{first_line}"
        spanned = range(first_line, reader.line_num + 1)
        first_line = reader.line_num + 1
        if not record or record == [""]:
            continue  # a blank line
        if any(line in bad_lines for line in spanned):
            yield Row(loc, None, "invalid UTF-8 in this row", "invalid UTF-8")
        elif len(record) != len(header):
            yield Row(
                loc, None, f"{len(record)} fields, the header has {len(header)}", "broken CSV"
            )
        else:
            yield Row(loc, dict(zip(header, record)))


def _record_rows(location: Path, batches: Iterable) -> Iterator[Row]:
    index = 0
    for batch in batches:
        for record in batch.to_pylist():
            index += 1
            yield Row(f"{location}:row {index}", record)


def read_parquet(path: Path) -> Iterator[Row]:
    """A Parquet file, read 4,096 rows at a time."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    return _record_rows(path, parquet.iter_batches(batch_size=4096))


def read_arrow_dataset(folder: Path) -> Iterator[Row]:
    """A folder written by `datasets.Dataset.save_to_disk`, opened with `datasets.load_from_disk`
    (memory-mapped, read 4,096 rows at a time) rather than by parsing its private files."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder}: not a readable `save_to_disk` dataset: {e}") from None
    if not isinstance(dataset, datasets.Dataset):  # a DatasetDict's splits are sources of their own
        raise DataError(f"{folder}: holds several splits; name one split's folder instead")
    return _record_rows(folder, dataset.with_format("arrow").iter(batch_size=4096))
