"""Uploaded training files: checked by the data stage's own reader and normaliser, then stored
under `<home>/files/<sha256>.jsonl`, so the same content uploaded twice is stored once.

The client's file name is only a label (it names rows in error messages and is echoed back); it
never becomes part of a path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tunewright.config import DataConfig
from tunewright.data.collect import Collected, Collector
from tunewright.data.readers import jsonl_rows
from tunewright.files import write_bytes_atomic

MAX_ERRORS_SHOWN = 5  # bad rows named in the refusal; the rest are counted


class UploadRefused(ValueError):
    """The upload is not usable; the message names the first bad rows as `file:line: reason`."""


# OpenAI's two fine-tuning file formats, as the data stage names them, and how a line shows it
CHAT, PAIRS = "messages", "openai_preference"
_SHAPES = {
    CHAT: '{"messages": [...]}',
    PAIRS: '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}',
}


@dataclass(frozen=True)
class CheckedUpload:
    sha256: str
    rows: int  # usable examples
    kind: str = CHAT  # CHAT (supervised) or PAIRS (preference pairs, for method dpo)


def file_kind(lines: list[bytes]) -> str:
    """PAIRS when the first non-blank line is an OpenAI DPO row, else CHAT (whose checks then
    name what is wrong with the file)."""
    first = next((line for line in lines if line.strip()), b"")
    return PAIRS if b'"preferred_output"' in first and b'"input"' in first else CHAT


def stored_kind(path: Path) -> str:
    """The kind of a stored upload (it was checked whole when it arrived)."""
    with path.open("rb") as f:
        return file_kind([line for line in (f.readline() for _ in range(100)) if line.strip()][:1])


def check_chat_jsonl(content: bytes, filename: str) -> CheckedUpload:
    """Validate JSONL in OpenAI's chat (`messages`) or DPO format with the data stage's reader
    and normaliser, exactly as `tunewright prepare` would read it; raises UploadRefused listing
    the bad rows.

    A file with any bad row is refused whole: nothing is stored half-way, and the client fixes
    the rows it is told about rather than training on silently fewer.
    """
    label = _label(filename)
    lines = content.splitlines()
    kind = file_kind(lines)
    collector = Collector(DataConfig(format=kind), strict=False)
    out = Collected()
    info = {"path": label, "format": kind, "rows": 0}
    rows = 0
    for batch in collector.collect_rows(jsonl_rows(lines, f"{label}:", 1), info, out):
        rows += len(batch)
    if out.quarantine:
        shown = "; ".join(f"{q.location}: {q.reason}" for q in out.quarantine[:MAX_ERRORS_SHOWN])
        more = len(out.quarantine) - MAX_ERRORS_SHOWN
        raise UploadRefused(
            f"{len(out.quarantine)} of {out.rows_read} rows are not valid "
            f"{'preference pairs' if kind == PAIRS else 'chat examples'} "
            f"({_SHAPES[kind]} per line): {shown}" + (f"; and {more} more" if more > 0 else "")
        )
    if rows == 0:
        raise UploadRefused(f"{label} holds no examples: send one JSON object per line")
    return CheckedUpload(hashlib.sha256(content).hexdigest(), rows, kind)


def store_content(files_dir: Path, sha256: str, content: bytes) -> Path:
    """Write the content once under its hash (atomically); returns its path."""
    path = content_path(files_dir, sha256)
    if not path.is_file():
        write_bytes_atomic(path, content)
    return path


def content_path(files_dir: Path, sha256: str) -> Path:
    return files_dir / f"{sha256}.jsonl"


def _label(filename: str) -> str:
    """The client's file name reduced to a harmless label for messages."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in name if c.isprintable())[:100]
    return cleaned or "upload.jsonl"
