"""Atomic, owned output folders for exports.

Every export is written into a hidden temporary folder next to its target, fsynced, checked, and
only then renamed into place, so a reader never sees half a model. The folder carries a manifest
(`export.json`) naming the run it came from; an export refuses to replace a folder that belongs to
a different run, or any non-empty folder that is not a tunewright export at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunewright.errors import TunewrightError
from tunewright.files import atomic_folder, write_json_atomic

MANIFEST = "export.json"


class ExportError(TunewrightError):
    """An export that cannot be written, or that failed its parity check."""


def check_owner(target: Path, run_dir: Path) -> None:
    """Raise unless `target` is absent, empty, or an earlier export of the same run."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder; choose another output folder")
    manifest = target / MANIFEST
    if manifest.is_file():
        owner = json.loads(manifest.read_text()).get("run_dir")
        if owner != str(run_dir.resolve()):
            raise ExportError(
                f"{target} holds an export of another run ({owner}); it is never overwritten. "
                "Choose another output folder or delete it yourself."
            )
    elif any(target.iterdir()):
        raise ExportError(
            f"{target} is not empty and is not a tunewright export; choose another output folder"
        )


@contextmanager
def staged_folder(target: Path, run_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder to write into; on success it replaces `target` atomically.

    The caller writes its files (and may check them) inside the `with` block; an exception
    leaves `target` untouched and removes the temporary folder.
    """
    check_owner(target, run_dir)
    with atomic_folder(target) as tmp:
        yield tmp
        check_owner(target, run_dir)  # another process may have written there meanwhile


def write_manifest(folder: Path, run_dir: Path, artifact: str, **extra) -> None:
    """Mark a staged folder as an export of `run_dir`; written last, so it also marks completeness."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    manifest = {
        "run_dir": str(run_dir.resolve()),
        "artifact": artifact,
        "created": time.time(),
        "files": files,
        **extra,
    }
    write_json_atomic(folder / MANIFEST, manifest)
