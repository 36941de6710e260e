"""Atomic file writes: results, reports and caches are read by later commands, so a crash must
leave the previous file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a uniquely named temporary file beside `path`, fsync it, rename it over
    `path`. The unique name lets several processes (DDP ranks) write the same file safely."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
