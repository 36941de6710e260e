"""Prepare: read the recipe's data, validate, clean, redact, deduplicate, split, and write a
dataset folder.

Stages, in order: collect (`collect.py`: read, validate, clean, redact, cut long texts) ->
deduplicate (`duplicates.py`) -> split, checking each selected example's token length with the
model's tokenizer and chat template (`split.py`, `token_stats.py`) -> leakage check -> write
(`store.py`, `card.py`).

Nothing is silently dropped: every row that cannot be used is written to `quarantine.jsonl`
with its `file:line`, field and reason, duplicates are listed in `duplicates.jsonl`, and the
summary accounts for every row: rows_read + chunks_added = quarantined + duplicates removed +
not_used_after_sampling + the split sizes.

The dataset folder holds `{train,val,test}.parquet`, `quarantine.jsonl`, `duplicates.jsonl`,
`manifest.json` (content hashes of inputs, config and outputs), `card.md` with
`length_histogram.png`, and `summary.json`, written last: its presence marks a complete folder.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunewright.config import RunConfig
from tunewright.data.collect import Collected, Collector, gc_paused
from tunewright.data.duplicates import DedupResult, find_duplicates, find_leaks
from tunewright.data.example import Example
from tunewright.data.quarantine import Quarantined, RowError
from tunewright.data.split import split_ids
from tunewright.data.store import (
    files_under,
    read_split,
    sha256_file,
    write_json,
    write_jsonl,
    write_split,
)
from tunewright.errors import DataError

SPLITS = ("train", "val", "test")
_LEAKS_LISTED = 20


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


def prepare(
    cfg: RunConfig, *, strict: bool = False, console: Console | None = None, tokens: bool = True
) -> PreparedDataset:
    """Read, validate, split and write the data of a recipe into `<run>/data/`.

    `tokens=False` skips the token-length check and statistics (and so never loads the model's
    tokenizer unless raw texts need cutting); only benchmarks of the other stages want that.
    """
    console = console or Console(stderr=True)
    if not cfg.data.train_files:
        raise DataError("data.train_files is empty: name at least one training file in the recipe")
    with gc_paused():  # every stage builds or walks millions of small objects on big inputs
        return _prepare(cfg, strict, console, tokens)


def _prepare(cfg: RunConfig, strict: bool, console: Console, tokens: bool) -> PreparedDataset:
    dc = cfg.data
    tokenizer = cache(lambda: _load_tokenizer(cfg))
    chunker = cache(lambda: _text_chunker(tokenizer(), dc.max_seq_len))
    collector = Collector(dc, strict=strict, chunker=lambda e: chunker().chunk(e))
    held = collector.collect([cfg.resolve_path(p) for p in dc.test_files])
    pool = collector.collect([cfg.resolve_path(p) for p in dc.train_files])
    examples = held.examples + pool.examples
    quarantine = held.quarantine + pool.quarantine
    duplicates = find_duplicates(examples, dc.dedup, dc.dedup_threshold)
    pool_ids = [i for i in range(len(held.examples), len(examples)) if i not in duplicates.removed]
    held_ids = [i for i in range(len(held.examples)) if i not in duplicates.removed]
    if not pool_ids:
        first = f"first problem: {quarantine[0].location}: {quarantine[0].reason}" if quarantine else "the files are empty"
        raise DataError(f"no usable training rows: {first}")

    meter = _token_meter(cfg, tokenizer()) if tokens else None

    def accept(i: int, split: str) -> bool:
        if meter is None:
            return True
        try:
            meter.measure(examples[i], split)
            return True
        except RowError as e:
            quarantine.append(Quarantined(examples[i].source, str(e), e.problem))
            if strict:
                raise DataError(f"{examples[i].source}: {e} (strict mode: stopping at the first bad row)") from None
            return False

    ids = split_ids(examples, pool_ids, held_ids, dc, accept)
    if not ids.train:
        why = f"last problem: {quarantine[-1].location}: {quarantine[-1].reason}" if quarantine else (
            f"all {len(pool_ids)} usable row(s) went to validation and test; add rows or lower the fractions"
        )
        raise DataError(f"no usable training rows: {why}")
    splits = {name: [examples[i] for i in getattr(ids, name)] for name in SPLITS}
    split_of = {i: name for name in SPLITS for i in getattr(ids, name)}
    leaks = find_leaks(duplicates.clusters, split_of)

    all_labelled = all(e.label is not None for e in [*splits["train"], *splits["test"]])
    labels = sorted({e.label for e in splits["train"]} | {e.label for e in splits["test"]}) if all_labelled else None
    rows_in = held.rows_read + pool.rows_read + held.chunks_added + pool.chunks_added
    summary = {
        "rows_read": held.rows_read + pool.rows_read,
        "chunks_added": held.chunks_added + pool.chunks_added,
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(Counter(q.problem for q in quarantine).most_common()),
        "duplicates_removed": len(duplicates.removed),
        "not_used_after_sampling": rows_in - len(quarantine) - len(duplicates.removed) - len(split_of),
        "splits": {name: len(v) for name, v in splits.items()},
        "labels": labels,
        "label_counts": {n: dict(Counter(e.label for e in v).most_common()) for n, v in splits.items()} if labels else None,
        "duplicates": {
            "mode": dc.dedup, "threshold": dc.dedup_threshold, "found": dict(duplicates.found),
            "clusters": len(duplicates.clusters),
        },
        "leakage": _leakage_summary(leaks, examples, dc.dedup),
        "cleaning": {"steps": list(dc.clean), "rows_changed": held.rows_cleaned + pool.rows_cleaned},
        "pii": {"types": list(dc.pii_redact) + list(dc.pii_patterns), "redacted": _merged(held.pii, pool.pii)},
        "tokens": meter.summary() if meter else None,
        "sources": held.sources + pool.sources,
        "skipped_files": held.skipped_files + pool.skipped_files,
    }
    folder = cfg.run_dir / "data"
    _write_folder(folder, cfg, splits, quarantine, duplicates, examples, summary, [held, pool])
    _report(console, folder, summary, quarantine)
    return PreparedDataset(folder, splits["train"], splits["val"], splits["test"], labels, summary)


def _load_tokenizer(cfg: RunConfig):
    from tunewright.models import load_tokenizer

    return load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)


def _text_chunker(tokenizer, max_seq_len: int):
    from tunewright.data.chunk import TextChunker

    return TextChunker(tokenizer, max_seq_len)


def _token_meter(cfg: RunConfig, tokenizer):
    from tunewright.data.token_stats import TokenMeter
    from tunewright.data.tokenize import ChatTokenizer

    return TokenMeter(ChatTokenizer(tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len))


def _merged(*counters: Counter) -> dict:
    return dict(sum(counters, Counter()).most_common())


def _leakage_summary(leaks, examples: list[Example], mode: str) -> dict:
    if mode == "off":
        return {"checked": False, "note": "data.dedup is off, so leakage was not checked"}
    return {
        "checked": True,
        "val": sum(leak.split == "val" for leak in leaks),
        "test": sum(leak.split == "test" for leak in leaks),
        "examples": [
            {"split": leak.split, "source": examples[leak.example].source, "train_source": examples[leak.train_example].source}
            for leak in leaks[:_LEAKS_LISTED]
        ],
    }


def _duplicate_rows(duplicates: DedupResult, examples: list[Example]):
    for cluster in duplicates.clusters:
        yield {
            "kept": examples[cluster[0]].source,
            "duplicates": [
                {"source": examples[i].source, "jaccard": round(duplicates.jaccard[i], 3), "removed": i in duplicates.removed}
                for i in cluster[1:]
            ],
        }


def _write_folder(folder, cfg, splits, quarantine, duplicates, examples, summary, collected: list[Collected]) -> None:
    from tunewright.data.card import write_card

    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        write_split(folder / f"{name}.parquet", split)
    write_jsonl(folder / "quarantine.jsonl", (q.to_json() for q in quarantine))
    write_jsonl(folder / "duplicates.jsonl", _duplicate_rows(duplicates, examples))
    manifest = _manifest(cfg, folder, [s["path"] for c in collected for s in c.sources])
    write_json(folder / "manifest.json", manifest)
    summary["input_hash"] = manifest["inputs"]["hash"]
    summary["manifest_hash"] = manifest["hash"]
    write_card(folder, summary)
    write_json(folder / "summary.json", summary)


def _manifest(cfg: RunConfig, folder: Path, source_paths: list[str]) -> dict:
    """Content hashes: inputs (file bytes, in reading order), config (the data settings and the
    model whose tokenizer measured lengths) and outputs; `hash` combines the three."""
    inputs = [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for s in source_paths for p in files_under(Path(s))]
    config = {"data": cfg.data.model_dump(mode="json"), "model": cfg.model.name}
    outputs = {name: sha256_file(folder / name) for name in [*(f"{s}.parquet" for s in SPLITS), "quarantine.jsonl", "duplicates.jsonl"]}
    hashes = {
        "inputs": _sha256_text("".join(f["sha256"] for f in inputs)),
        "config": _sha256_text(json.dumps(config, sort_keys=True)),
        "outputs": _sha256_text("".join(outputs.values())),
    }
    return {
        "hash": _sha256_text("".join(hashes.values())),
        "inputs": {"hash": hashes["inputs"], "files": inputs},
        "config": {"hash": hashes["config"], **config},
        "outputs": {"hash": hashes["outputs"], "files": outputs},
    }


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _report(console: Console, folder: Path, summary: dict, quarantine: list[Quarantined]) -> None:
    for source in summary["sources"]:
        if "note" in source:
            console.print(f"[yellow]note:[/] {escape(source['path'])}: {escape(source['note'])}")
    if summary["skipped_files"]:
        console.print(f"[yellow]{len(summary['skipped_files'])} file(s) skipped[/] (no reader): {escape(', '.join(summary['skipped_files'][:5]))}")
    if quarantine:
        console.print(f"[yellow]{len(quarantine)} row(s) quarantined[/] (see {escape(str(folder / 'quarantine.jsonl'))}):")
        for q in quarantine[:5]:
            console.print(f"  {escape(q.location)}: {escape(q.reason)}")
    found = summary["duplicates"]["found"]
    if found:
        console.print(
            f"duplicates: {found.get('exact', 0)} exact, {found.get('near', 0)} near; "
            f"{summary['duplicates_removed']} removed (data.dedup={summary['duplicates']['mode']})"
        )
    leakage = summary["leakage"]
    if leakage.get("val") or leakage.get("test"):
        console.print(
            f"[yellow]leakage:[/] {leakage['val']} validation and {leakage['test']} test example(s) "
            "have a duplicate in train (data.dedup: near removes them)"
        )
    console.print(f"data card: {escape(str(folder / 'card.md'))}")


def load_prepared(folder: Path) -> PreparedDataset:
    """Read back a dataset folder written by `prepare`."""
    if not (folder / "summary.json").is_file():
        raise DataError(f"{folder} is not a prepared dataset (no summary.json); run `tunewright prepare` first")
    splits = {}
    for name in SPLITS:
        path = folder / f"{name}.parquet"
        splits[name] = read_split(path if path.is_file() else folder / f"{name}.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    return PreparedDataset(folder, splits["train"], splits["val"], splits["test"], summary["labels"], summary)
