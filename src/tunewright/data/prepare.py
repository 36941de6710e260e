"""Prepare: read the recipe's data files, validate and normalise rows, split, write a dataset folder.

Nothing is silently dropped: every row that cannot be used is written to `quarantine.jsonl` with
its `file:line`, field and reason, and the summary counts every row in and out by reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from tunewright.config import RunConfig
from tunewright.data.example import Example
from tunewright.data.formats import NORMALISERS, RowError, detect_format, rename_columns
from tunewright.data.readers import read_rows
from tunewright.data.tokenize import ChatTokenizer
from tunewright.errors import DataError
from tunewright.models import load_tokenizer

SPLITS = ("train", "val", "test")


@dataclass
class Quarantined:
    location: str
    reason: str

    def to_json(self) -> dict:
        return {"location": self.location, "reason": self.reason}


@dataclass
class PreparedDataset:
    folder: Path
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str] | None  # the label set when the task is classification
    summary: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _load_file(path: Path, fmt: str, columns: dict[str, str], quarantine: list[Quarantined]) -> list[Example]:
    examples: list[Example] = []
    file_format = None if fmt == "auto" else fmt
    for row in read_rows(path):
        if row.error is not None:
            quarantine.append(Quarantined(row.location, row.error))
            continue
        data = rename_columns(row.data, columns)
        try:
            if file_format is None:
                file_format = detect_format(set(data), row.location)
            examples.append(_with_source(NORMALISERS[file_format](data), row.location))
        except RowError as e:
            quarantine.append(Quarantined(row.location, str(e)))
    return examples


def _with_source(example: Example, location: str) -> Example:
    return Example(example.messages, example.text, example.label, location, example.meta)


def _read_split(cfg: RunConfig, files: list[str], quarantine: list[Quarantined], strict: bool) -> list[Example]:
    examples = []
    for name in files:
        path = cfg.resolve_path(name)
        before = len(quarantine)
        examples.extend(_load_file(path, cfg.data.format, cfg.data.columns, quarantine))
        if strict and len(quarantine) > before:
            first = quarantine[before]
            raise DataError(f"{first.location}: {first.reason} (strict mode: stopping at the first bad row)")
    return examples


def _hash_inputs(cfg: RunConfig) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(cfg.model.name.encode())
    for name in [*cfg.data.train_files, *cfg.data.test_files]:
        digest.update(cfg.resolve_path(name).read_bytes())
    return digest.hexdigest()


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare(cfg: RunConfig, *, strict: bool = False, console: Console | None = None) -> PreparedDataset:
    """Read, validate, split and write the data of a recipe into `<run>/data/`."""
    console = console or Console(stderr=True)
    if not cfg.data.train_files:
        raise DataError("data.train_files is empty: name at least one training file in the recipe")
    quarantine: list[Quarantined] = []
    rng = random.Random(cfg.data.seed)
    pool = _read_split(cfg, cfg.data.train_files, quarantine, strict)
    test = _read_split(cfg, cfg.data.test_files, quarantine, strict)
    rows_read = len(pool) + len(test) + len(quarantine)

    tokenizer = ChatTokenizer(load_tokenizer(cfg.model.name), cfg.data.system_prompt, cfg.data.max_seq_len)
    kept_pool, kept_test = [], []
    for source, kept in ((pool, kept_pool), (test, kept_test)):
        for example in source:
            try:
                tokenizer.encode_example(example)
                kept.append(example)
            except DataError as e:
                quarantine.append(Quarantined(example.source, str(e).split(": ", 1)[-1]))
    pool, test = kept_pool, kept_test
    if strict and quarantine:
        raise DataError(f"{quarantine[0].location}: {quarantine[0].reason}")
    if not pool:
        raise DataError(
            "no usable training rows: " + (f"first problem: {quarantine[0].location}: {quarantine[0].reason}" if quarantine else "the files are empty")
        )

    rng.shuffle(pool)
    if not test:
        n_test = max(1, round(len(pool) * cfg.data.test_fraction))
        test, pool = pool[:n_test], pool[n_test:]
    if cfg.data.max_train_examples is not None:
        pool = pool[: cfg.data.max_train_examples + round(cfg.data.max_train_examples * cfg.data.val_fraction)]
    n_val = round(len(pool) * cfg.data.val_fraction)
    val, train = pool[:n_val], pool[n_val:]
    if cfg.data.max_train_examples is not None:
        train = train[: cfg.data.max_train_examples]
    if cfg.data.max_test_examples is not None and len(test) > cfg.data.max_test_examples:
        test = rng.sample(test, cfg.data.max_test_examples)

    all_labelled = all(e.label is not None for e in [*train, *test])
    labels = sorted({e.label for e in train} | {e.label for e in test}) if all_labelled else None

    folder = cfg.run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, examples in zip(SPLITS, (train, val, test)):
        _write_jsonl_atomic(folder / f"{name}.jsonl", [e.to_json() for e in examples])
    _write_jsonl_atomic(folder / "quarantine.jsonl", [q.to_json() for q in quarantine])
    summary = {
        "rows_read": rows_read,
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(Counter(q.reason.split(":")[0] for q in quarantine)),
        "not_used_after_sampling": rows_read - len(quarantine) - len(train) - len(val) - len(test),
        "splits": {"train": len(train), "val": len(val), "test": len(test)},
        "labels": labels,
        "input_hash": _hash_inputs(cfg),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    if quarantine:
        console.print(f"[yellow]{len(quarantine)} row(s) quarantined[/] (see {folder / 'quarantine.jsonl'}):")
        for q in quarantine[:5]:
            console.print(f"  {q.location}: {q.reason}")
    return PreparedDataset(folder, train, val, test, labels, summary)


def load_prepared(folder: Path) -> PreparedDataset:
    """Read back a dataset folder written by `prepare`."""
    if not (folder / "summary.json").is_file():
        raise DataError(f"{folder} is not a prepared dataset (no summary.json); run `tunewright prepare` first")
    splits = {}
    for name in SPLITS:
        with (folder / f"{name}.jsonl").open(encoding="utf-8") as f:
            splits[name] = [Example.from_json(json.loads(line)) for line in f]
    summary = json.loads((folder / "summary.json").read_text())
    return PreparedDataset(folder, splits["train"], splits["val"], splits["test"], summary["labels"], summary)
