"""Sources: what a recipe's data path names, and which reader reads each file.

A path in `data.train_files` / `data.test_files` may be
- a file: read by its suffix (JSONL, JSON, CSV/TSV, Parquet, text, Markdown, HTML);
- a glob such as `data/**/*.jsonl` (recursive `**` allowed);
- a folder: every supported file under it, recursively, in sorted order (hidden files skipped;
  other files are listed in the summary as skipped, never silently ignored);
- a folder written by `datasets` `save_to_disk`: a dataset, or a dataset dict (all its splits;
  name a split's subfolder to read only that split).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunewright.data.documents import read_html, read_text
from tunewright.data.readers import (
    Row,
    read_arrow_dataset,
    read_csv,
    read_json,
    read_jsonl,
    read_parquet,
)
from tunewright.errors import DataError

Reader = Callable[[Path], Iterator[Row]]

# suffix -> (reader, the format its rows always have, or None to detect it from the columns)
READERS: dict[str, tuple[Reader, str | None]] = {
    ".jsonl": (read_jsonl, None),
    ".ndjson": (read_jsonl, None),
    ".json": (read_json, None),
    ".csv": (read_csv, None),
    ".tsv": (lambda p: read_csv(p, "\t"), None),
    ".parquet": (read_parquet, None),
    ".txt": (read_text, "text"),
    ".md": (read_text, "text"),
    ".markdown": (read_text, "text"),
    ".html": (read_html, "text"),
    ".htm": (read_html, "text"),
}
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    path: Path  # a file, or a save_to_disk folder
    read: Reader = field(compare=False)
    format: str | None = None  # fixed by the file type; None: detected from the columns

    def rows(self) -> Iterator[Row]:
        return self.read(self.path)


@dataclass
class Expanded:
    sources: list[Source]
    skipped: list[Path]  # files in named folders that no reader reads


def read_rows(path: Path) -> Iterator[Row]:
    """Stream the rows of one data file; the reader is chosen by the file's suffix."""
    return _file_source(path).rows()


def expand(path: Path) -> Expanded:
    """The sources a recipe path names; raises DataError when it names nothing readable."""
    if _GLOB_CHARS & set(str(path)):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        if not matches:
            raise DataError(f"data path {path}: the pattern matches no files")
        out = Expanded([], [])
        for match in matches:
            if match.is_dir() and not _is_saved_dataset(match):
                continue  # `data/*` names the files; a folder match is not a request to recurse
            _extend(out, _expand_existing(match, explicit=False))
        if not out.sources:
            raise DataError(
                f"data path {path}: the pattern matches no supported files ({_suffixes()})"
            )
        return out
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    return _expand_existing(path, explicit=True)


def _extend(out: Expanded, more: Expanded) -> None:
    out.sources += more.sources
    out.skipped += more.skipped


def _expand_existing(path: Path, *, explicit: bool) -> Expanded:
    if path.is_file():
        if not explicit and path.suffix.lower() not in READERS:
            return Expanded([], [path])
        return Expanded([_file_source(path)], [])
    if (path / "state.json").is_file():
        return Expanded([Source(path, read_arrow_dataset)], [])
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: unreadable dataset_dict.json: {e}") from None
        return Expanded([Source(path / split, read_arrow_dataset) for split in splits], [])
    out = Expanded([], [])
    for child in sorted(path.iterdir()):
        if not child.name.startswith("."):
            _extend(out, _expand_existing(child, explicit=False))
    if explicit and not out.sources:
        raise DataError(f"data folder {path} holds no supported files ({_suffixes()})")
    return out


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _file_source(path: Path) -> Source:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    entry = READERS.get(path.suffix.lower())
    if entry is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (supported: {_suffixes()})")
    return Source(path, *entry)


def _suffixes() -> str:
    return ", ".join(sorted(READERS))
