"""tunewright.files: the one atomic-write helper every stage uses."""

from __future__ import annotations

import json
import os

import pytest

from tunewright.files import (
    TMP_PREFIX,
    atomic_folder,
    atomic_path,
    temporary_path,
    write_json_atomic,
    write_text_atomic,
)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_temporary_names_are_unique_per_writer_and_hidden(tmp_path):
    names = {temporary_path(tmp_path / "x.json").name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(TMP_PREFIX) and str(os.getpid()) in n for n in names)


def test_text_is_replaced_whole(tmp_path):
    path = tmp_path / "nested" / "report.md"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"


def test_a_folder_is_replaced_only_when_complete(tmp_path):
    target = tmp_path / "adapter"
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "weights").write_text("v2, half")
        raise RuntimeError("crash")
    assert (target / "weights").read_text() == "v1"
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_keep_existing_keeps_the_folder_another_writer_finished_first(tmp_path):
    target = tmp_path / "cache"
    with atomic_folder(target, keep_existing=True) as tmp:
        (tmp / "f").write_text("mine")
        target.mkdir()
        (target / "f").write_text("theirs")
    assert (target / "f").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
