"""The studio's state on disk: one SQLite database (`<home>/studio.db`) holding uploaded files,
fine-tuning jobs and their events.

WAL mode, so the HTTP handlers read while the runner writes. The schema is versioned: the
`schema_version` table holds the version, and `migrate` brings an older database up to date, one
step at a time, each in its own transaction. Every statement runs under one lock on one
connection: SQLite serialises writers anyway, and the studio's traffic is small.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
JOB_ID = re.compile(r"ftjob-[0-9a-f]{24}")
FILE_ID = re.compile(r"file-[0-9a-f]{24}")
ACTIVE = ("validating_files", "queued", "running")  # statuses a job can still leave
FINISHED = ("succeeded", "failed", "cancelled")

_V1 = """
CREATE TABLE files (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, created_at INTEGER NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    status TEXT NOT NULL, model TEXT NOT NULL, training_file TEXT NOT NULL,
    validation_file TEXT, suffix TEXT, seed INTEGER NOT NULL, request TEXT NOT NULL,
    fine_tuned_model TEXT, finished_at INTEGER, estimated_finish INTEGER, trained_tokens INTEGER,
    error TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE INDEX jobs_status ON jobs (status, seq);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL,
    data TEXT);
CREATE INDEX events_job ON events (job_id, seq);
"""
# version -> the SQL that brings the previous version to it; a schema change appends one here
MIGRATIONS: dict[int, str] = {1: _V1}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


@dataclass
class FileRecord:
    id: str
    sha256: str
    bytes: int
    filename: str
    purpose: str
    created_at: int
    rows: int


@dataclass
class JobRecord:
    id: str
    created_at: int
    status: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    request: dict[str, Any]  # the create request as validated: method, metadata, hyperparameters
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    trained_tokens: int | None = None
    error: dict | None = None  # {"code", "message", "param"}
    cancel_requested: bool = False
    seq: int = field(default=0, repr=False)


def migrate(db: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version it had (0: new)."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    found = row[0] if row else 0
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the studio database has schema version {found}, newer than this tunewright "
            f"({SCHEMA_VERSION}); upgrade tunewright"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return found


class Store:
    """Files, jobs and events; every method is safe to call from any thread."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        self._lock = threading.Lock()
        with self._lock:
            migrate(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- files ------------------------------------------------------------------------------
    def add_file(self, record: FileRecord) -> None:
        self._run(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.sha256,
                record.bytes,
                record.filename,
                record.purpose,
                record.created_at,
                record.rows,
            ),
        )

    def file(self, file_id: str) -> FileRecord | None:
        rows = self._run("SELECT * FROM files WHERE id = ?", (file_id,))
        return FileRecord(**dict(rows[0])) if rows else None

    def files(self, purpose: str | None = None) -> list[FileRecord]:
        rows = self._run(
            "SELECT * FROM files WHERE ? IS NULL OR purpose = ? ORDER BY created_at DESC, rowid DESC",
            (purpose, purpose),
        )
        return [FileRecord(**dict(r)) for r in rows]

    def delete_file(self, file_id: str) -> bool:
        """Forget the file; True when the stored content is no longer used by another file id."""
        record = self.file(file_id)
        self._run("DELETE FROM files WHERE id = ?", (file_id,))
        if record is None:
            return False
        return not self._run("SELECT 1 FROM files WHERE sha256 = ?", (record.sha256,))

    # --- jobs -------------------------------------------------------------------------------
    def add_job(self, job: JobRecord) -> None:
        self._run(
            "INSERT INTO jobs (id, created_at, status, model, training_file, validation_file, "
            "suffix, seed, request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                job.created_at,
                job.status,
                job.model,
                job.training_file,
                job.validation_file,
                job.suffix,
                job.seed,
                json.dumps(job.request),
            ),
        )

    def job(self, job_id: str) -> JobRecord | None:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, *, after: str | None = None, limit: int = 20) -> list[JobRecord]:
        """Newest first; `after` is the id of the last job of the previous page."""
        rows = self._run(
            "SELECT * FROM jobs WHERE seq < COALESCE((SELECT seq FROM jobs WHERE id = ?), "
            "9223372036854775807) ORDER BY seq DESC LIMIT ?",
            (after, limit),
        )
        return [_job(r) for r in rows]

    def jobs_with_status(self, *statuses: str) -> list[JobRecord]:
        """Oldest first: the order the runner takes queued jobs in."""
        marks = ", ".join("?" for _ in statuses)
        rows = self._run(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)
        return [_job(r) for r in rows]

    def update_job(self, job_id: str, **values: Any) -> None:
        if "error" in values and values["error"] is not None:
            values["error"] = json.dumps(values["error"])
        columns = ", ".join(f"{k} = ?" for k in values)  # keys come from this package, not clients
        self._run(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def set_status(self, job_id: str, status: str, *, only_from: tuple[str, ...] = ()) -> bool:
        """Move a job to `status` (only from one of `only_from`, when given); True if it moved."""
        finished = now() if status in FINISHED else None
        with self._lock:
            if only_from:
                marks = ", ".join("?" for _ in only_from)
                cur = self._db.execute(
                    f"UPDATE jobs SET status = ?, finished_at = COALESCE(?, finished_at) "
                    f"WHERE id = ? AND status IN ({marks})",
                    (status, finished, job_id, *only_from),
                )
            else:
                cur = self._db.execute(
                    "UPDATE jobs SET status = ?, finished_at = COALESCE(?, finished_at) WHERE id = ?",
                    (status, finished, job_id),
                )
            return cur.rowcount == 1

    # --- events -----------------------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict | None = None,
    ) -> None:
        self._run(
            "INSERT INTO events (id, job_id, created_at, level, message, type, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                new_id("ftevent"),
                job_id,
                now(),
                level,
                message,
                type,
                None if data is None else json.dumps(data),
            ),
        )

    def events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> list[dict]:
        """Newest first, as OpenAI lists them; `after` is the id of the previous page's last."""
        rows = self._run(
            "SELECT * FROM events WHERE job_id = ? AND seq < COALESCE((SELECT seq FROM events "
            "WHERE id = ?), 9223372036854775807) ORDER BY seq DESC LIMIT ?",
            (job_id, after, limit),
        )
        return [
            {
                "id": r["id"],
                "object": "fine_tuning.job.event",
                "created_at": r["created_at"],
                "level": r["level"],
                "message": r["message"],
                "type": r["type"],
                "data": json.loads(r["data"]) if r["data"] else None,
            }
            for r in rows
        ]


def _job(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["request"] = json.loads(values["request"])
    values["error"] = json.loads(values["error"]) if values["error"] else None
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)
