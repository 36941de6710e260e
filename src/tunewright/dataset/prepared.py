"""A prepared dataset folder as every later stage reads it: the splits, the label set, the summary.

The data stage (`tunewright.data.prepare`) writes these folders; train, evaluate, export and the
pipeline open them through this module, so none of them imports the data stage itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunewright.dataset.example import Example
from tunewright.dataset.store import read_split
from tunewright.errors import DataError

SPLITS = ("train", "val", "test")
SUMMARY_FILE = "summary.json"  # written last by prepare: its presence marks a complete folder


class PreparedDataset:
    """A prepared dataset folder. Splits not given are read from its Parquet files on first
    use, so preparing a large dataset never holds all its examples in memory."""

    def __init__(
        self,
        folder: Path,
        train: list[Example] | None = None,
        val: list[Example] | None = None,
        test: list[Example] | None = None,
        labels: list[str] | None = None,  # the label set when the task is classification
        summary: dict | None = None,
    ) -> None:
        self.folder = folder
        self.labels = labels
        self.summary = summary if summary is not None else {}
        given = {"train": train, "val": val, "test": test}
        self._splits: dict[str, list[Example]] = {
            name: split for name, split in given.items() if split is not None
        }

    @property
    def train(self) -> list[Example]:
        return self.split("train")

    @property
    def val(self) -> list[Example]:
        return self.split("val")

    @property
    def test(self) -> list[Example]:
        return self.split("test")

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise KeyError(name)
        if name not in self._splits:
            path = self.folder / f"{name}.parquet"
            self._splits[name] = read_split(
                path if path.is_file() else self.folder / f"{name}.jsonl"
            )
        return self._splits[name]


def load_prepared(folder: Path) -> PreparedDataset:
    """Open a dataset folder written by `prepare` (its splits are read on first use)."""
    if not (folder / SUMMARY_FILE).is_file():
        raise DataError(
            f"{folder} is not a prepared dataset (no summary.json); run `tunewright prepare` first"
        )
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    return PreparedDataset(folder, labels=summary["labels"], summary=summary)
