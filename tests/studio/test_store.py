"""The job store: a versioned schema, migrated on open; WAL; pages newest first."""

from __future__ import annotations

import sqlite3

import pytest

from tunewright.studio.store import SCHEMA_VERSION, JobRecord, Store, migrate, new_id


def test_a_new_database_is_migrated_to_the_current_version_in_wal_mode(tmp_path):
    store = Store(tmp_path / "studio.db")
    store.close()
    db = sqlite3.connect(tmp_path / "studio.db")
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert migrate(db) == SCHEMA_VERSION  # reopening migrates nothing


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)
    migrate(db)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this tunewright"):
        migrate(db)


def test_jobs_survive_a_reopen_and_page_newest_first(tmp_path):
    store = Store(tmp_path / "studio.db")
    ids = [new_id("ftjob") for _ in range(5)]
    for i, job_id in enumerate(ids):
        store.add_job(
            JobRecord(
                job_id, 1000 + i, "queued", "m", "file-x", None, None, i, {"hyperparameters": {}}
            )
        )
    store.close()
    store = Store(tmp_path / "studio.db")
    first = store.jobs(limit=2)
    assert [j.id for j in first] == ids[::-1][:2]
    assert [j.id for j in store.jobs(after=first[-1].id, limit=10)] == ids[::-1][2:]
    assert [j.id for j in store.jobs_with_status("queued")] == ids  # the runner takes the oldest
    assert store.set_status(ids[0], "running", only_from=("queued",))
    assert not store.set_status(ids[0], "running", only_from=("queued",))
