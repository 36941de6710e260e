"""Rows that cannot be used: why, and where they came from.

Every problem a row can have belongs to one `Problem` class; the summary and the data card count
quarantined rows by class, and the quarantine file names each row's `file:line` and the full
reason (which names the field).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Problem = Literal[
    "invalid UTF-8",
    "broken JSON",
    "broken CSV",
    "not an object",
    "unknown format",
    "missing field",
    "wrong type",
    "empty content",
    "unknown role",
    "roles out of order",
    "no assistant turn",
    "side not an assistant answer",  # preference pairs: a side's last message
    "sides differ before the answer",
    "identical chosen and rejected",
    "over the token limit",
    "unreadable template",
]


class RowError(ValueError):
    """A row that cannot be used; the message names the field, `problem` classifies it."""

    def __init__(self, message: str, problem: Problem, field: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.field = field  # set for a missing canonical field, to name the user's column


@dataclass(frozen=True, slots=True)
class Quarantined:
    location: str  # file:line, or file:row N for columnar files
    reason: str  # names the field and what is wrong with it
    problem: Problem

    def to_json(self) -> dict:
        # `problem` is derivable from the reason and counted in the summary; the file stays
        # two keys a person reads at a glance.
        return {"location": self.location, "reason": self.reason}


class QuarantineLog:
    """Quarantined rows written to a JSONL file as they are found, so memory stays bounded
    however many rows are bad; keeps the counts by problem and the first and last entries for
    messages. `append` is the same call as on a list, so collection can use either."""

    _KEPT = 5  # entries kept for the console report and error messages

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self.by_problem: Counter[str] = Counter()
        self.first: list[Quarantined] = []
        self.last: Quarantined | None = None

    def append(self, entry: Quarantined) -> None:
        self._file.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
        self.by_problem[entry.problem] += 1
        if len(self.first) < self._KEPT:
            self.first.append(entry)
        self.last = entry

    def __len__(self) -> int:
        return self.by_problem.total()

    def close(self) -> None:
        self._file.close()
