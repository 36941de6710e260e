"""Staged folders: published atomically on success, untouched on failure, owned by one run."""

import pytest

from tunewright.export.publish import ExportError, staged_folder, write_manifest


def test_failure_inside_leaves_the_target_untouched(tmp_path):
    run = tmp_path / "run"
    target = tmp_path / "out"
    with staged_folder(target, run) as tmp:
        (tmp / "a.txt").write_text("one")
        write_manifest(tmp, run, "x")
    with pytest.raises(RuntimeError), staged_folder(target, run) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("writer crashed")
    assert (target / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_another_runs_folder_is_refused(tmp_path):
    with staged_folder(tmp_path / "out", tmp_path / "run-a") as tmp:
        write_manifest(tmp, tmp_path / "run-a", "x")
    with (
        pytest.raises(ExportError, match="another run"),
        staged_folder(tmp_path / "out", tmp_path / "run-b"),
    ):
        pass
