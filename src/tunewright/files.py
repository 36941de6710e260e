"""Atomic writes, the one way tunewright writes a file or folder that a later command reads.

Results, reports, caches, prepared splits and exported models are read by later commands, so a
crash must leave the previous version or the new one, never half of one. Every write here does
the same three things: write under a temporary name that is unique per writer (process id and a
random part, so DDP ranks or two commands writing one file never share it), fsync, rename over
the target (then fsync the folder, so the rename itself survives a power cut).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"  # every temporary name starts with this, so readers can skip leftovers


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path`, unique to this writer."""
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """fsync the finished temporary file `tmp`, rename it onto `path`, fsync the folder."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write (by any library); on success it is committed onto
    `path`, on an exception removed, leaving `path` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, value: object, *, sort_keys: bool = False) -> None:
    write_text_atomic(
        path, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n"
    )


@contextmanager
def atomic_folder(target: Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success every file in it is fsynced and it replaces
    `target` (the old folder is kept until the new one is in place, then removed). With
    `keep_existing`, a `target` that appeared meanwhile (another process won a race to build the
    same cache) is kept and the new folder dropped. On an exception `target` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(target)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                fsync_path(file)
        fsync_path(tmp)
        if keep_existing and target.exists():
            return
        old = None
        if target.exists():
            old = temporary_path(target)
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
