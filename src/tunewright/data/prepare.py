"""Prepare: read the recipe's data, validate, clean, redact, deduplicate, split, and write a
dataset folder.

Stages, in order: collect (`collect.py`: read, validate, clean, redact, cut long texts) ->
deduplicate (`duplicates.py`) -> split, checking each selected example's token length with the
model's tokenizer and chat template and, with `data.truncate`, shortening the user text of chats
over the limit (`split.py`, `token_stats.py`, `truncate.py`) -> leakage check -> write
(`store.py`, `card.py`).

Memory stays bounded however large the input: examples stream through collection and
deduplication in batches and are parked in an uncompressed Arrow spool next to the output;
splitting needs only their ids and label/group codes; the splits are then written by streaming
the spool, row group by row group. What grows with the data is the deduplicator's compact index
(a few hundred bytes per distinct text, see `dedup.py`) and a few bytes per example for the split.

Nothing is silently dropped: every row that cannot be used is written to `quarantine.jsonl`
with its `file:line`, field and reason, duplicates are listed in `duplicates.jsonl`, and the
summary accounts for every row: rows_read + chunks_added = quarantined + duplicates removed +
not_used_after_sampling + the split sizes.

The dataset folder holds `{train,val,test}.parquet`, `quarantine.jsonl`, `duplicates.jsonl`,
`manifest.json` (content hashes of inputs, config and outputs), `card.md` with
`length_histogram.png`, and `summary.json`, written last: its presence marks a complete folder.
"""

from __future__ import annotations

import gc
import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape

from tunewright.config import RunConfig
from tunewright.data.batches import GC_EVERY_BATCHES, Batch, load_tokenizer, make_batches
from tunewright.data.collect import Collected, gc_paused
from tunewright.data.duplicates import DedupResult, DuplicateFinder, find_leaks
from tunewright.data.quarantine import Quarantined, QuarantineLog, RowError
from tunewright.data.split import SplitIds, Units, order_streams, take_splits
from tunewright.dataset.prepared import SPLITS, SUMMARY_FILE, PreparedDataset
from tunewright.dataset.store import (
    SplitWriter,
    Spool,
    examples_table,
    files_under,
    sha256_file,
    table_examples,
    write_json,
    write_jsonl,
)
from tunewright.errors import DataError
from tunewright.files import commit, temporary_path

if TYPE_CHECKING:  # imported where used: they load transformers, which tokens=False skips
    from tunewright.data.token_stats import Measured
    from tunewright.data.truncate import Cut

_LEAKS_LISTED = 20


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
    folder = cfg.run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    spool = temporary_path(folder / "spool.arrow")
    quarantine = QuarantineLog(temporary_path(folder / "quarantine.jsonl"))
    try:
        with gc_paused():  # every stage builds or walks millions of small objects on big inputs
            return _prepare(cfg, strict, console, tokens, folder, Spool(spool), quarantine)
    finally:
        quarantine.close()
        quarantine.path.unlink(missing_ok=True)
        spool.unlink(missing_ok=True)


class _SplitKeys:
    """Per example id, what splitting and the summary need: a label code (-1: no label) and,
    with `data.group_by`, a group code; and a prompt code that is the same for the preference
    pairs of one prompt (unique for every other example). A few bytes an example instead of
    the example."""

    def __init__(self, grouped: bool) -> None:
        self.label_code: dict[str, int] = {}
        self.group_code: dict[str, int] | None = {} if grouped else None
        self._labels = array("i")
        self._groups = array("q")
        self._prompts = array("q")
        self.pairs = 0  # preference pairs seen

    def add(
        self, labels: list[str | None], groups: list[str] | None, prompts: list[int | None]
    ) -> None:
        # A pair's code is its prompt hash (>= 0); any other example gets a code of its own (< 0).
        start = len(self._prompts)
        self._prompts.extend([-(start + k + 1) if p is None else p for k, p in enumerate(prompts)])
        self.pairs += sum(p is not None for p in prompts)
        codes = self.label_code
        self._labels.extend(
            [-1 if label is None else codes.setdefault(label, len(codes)) for label in labels]
        )
        if self.group_code is not None:
            group_codes = self.group_code
            self._groups.extend(
                [group_codes.setdefault(group, len(group_codes)) for group in groups or ()]
            )

    def labels(self) -> np.ndarray:
        return np.frombuffer(self._labels, np.int32) if len(self._labels) else np.zeros(0, np.int32)

    def label_names(self) -> list[str]:
        return list(self.label_code)  # code -> name

    def label_ranks(self) -> np.ndarray:
        """Label codes renumbered so that sorting them sorts the label names."""
        names = self.label_names()
        rank = np.zeros(len(names) + 1, np.int32)
        rank[:-1][np.argsort(np.array(names, dtype=object))] = np.arange(len(names), dtype=np.int32)
        rank[-1] = -1  # code -1 (no label) indexes the last entry
        return rank[self.labels()]

    def prompt_groups(self) -> np.ndarray:
        return (
            np.frombuffer(self._prompts, np.int64) if len(self._prompts) else np.zeros(0, np.int64)
        )

    def groups(self) -> np.ndarray | None:
        if self.group_code is None:
            return None
        return np.frombuffer(self._groups, np.int64) if len(self._groups) else np.zeros(0, np.int64)


def _prepare(
    cfg: RunConfig,
    strict: bool,
    console: Console,
    tokens: bool,
    folder: Path,
    spool: Spool,
    quarantine: QuarantineLog,
) -> PreparedDataset:
    dc = cfg.data
    tokenizer = cache(lambda: load_tokenizer(cfg))
    parked = _collect_and_deduplicate(cfg, strict, tokenizer, spool, quarantine)
    held, pool, duplicates, keys = parked.held, parked.pool, parked.duplicates, parked.keys
    held_ids, pool_ids = parked.held_ids, parked.pool_ids
    if not len(pool_ids):
        first = quarantine.first[0] if quarantine.first else None
        why = f"first problem: {first.location}: {first.reason}" if first else "the files are empty"
        raise DataError(f"no usable training rows: {why}")

    # Pass 2: split (reading back only the examples whose token length must be checked).
    split_dc, groups = dc, keys.groups()
    if keys.pairs and dc.split == "random" and dc.group_by is None:
        # Pairs of one prompt split apart would let a model be evaluated on a prompt it was
        # trained on; group them unless the user chose how to split.
        split_dc, groups = dc.model_copy(update={"split": "group"}), keys.prompt_groups()
    units = order_streams(pool_ids, held_ids, split_dc, labels=keys.label_ranks(), groups=groups)
    meter = _token_meter(cfg, tokenizer()) if tokens else None
    ids, cuts = (
        _split_with_token_check(units, dc, meter, spool, quarantine, strict)
        if meter
        else (take_splits(*units, dc, None), {})
    )
    if not len(ids.train):
        last = quarantine.last
        why = (
            f"last problem: {last.location}: {last.reason}"
            if last
            else (
                f"all {len(pool_ids)} usable row(s) went to validation and test; add rows or lower the fractions"
            )
        )
        raise DataError(f"no usable training rows: {why}")
    split_code = np.full(parked.examples, -1, np.int8)
    for code, name in enumerate(SPLITS):
        split_code[getattr(ids, name)] = code

    # Pass 3: write the splits, streaming the spool once more. The folder is incomplete until
    # summary.json is written again.
    (folder / SUMMARY_FILE).unlink(missing_ok=True)
    sizes = _write_splits(folder, spool, split_code, cuts)
    members = [i for cluster in duplicates.clusters for i in cluster]
    split_of = {i: SPLITS[split_code[i]] for i in members if split_code[i] >= 0}
    leaks = find_leaks(duplicates.clusters, split_of)
    source_of = {
        **duplicates.sources,
        **_spooled_sources(spool, [c[0] for c in duplicates.clusters]),
    }

    labels, label_counts = _label_summary(keys, ids)
    rows_in = held.rows_read + pool.rows_read + held.chunks_added + pool.chunks_added
    selected = sum(sizes.values())
    summary = {
        "rows_read": held.rows_read + pool.rows_read,
        "chunks_added": held.chunks_added + pool.chunks_added,
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(quarantine.by_problem.most_common()),
        "duplicates_removed": len(duplicates.removed),
        "not_used_after_sampling": rows_in - len(quarantine) - len(duplicates.removed) - selected,
        "splits": sizes,
        "labels": labels,
        "label_counts": label_counts,
        "duplicates": {
            "mode": dc.dedup,
            "threshold": dc.dedup_threshold,
            "found": dict(duplicates.found),
            "clusters": len(duplicates.clusters),
        },
        "leakage": _leakage_summary(leaks, source_of, dc.dedup),
        "cleaning": {
            "steps": list(dc.clean),
            "rows_changed": held.rows_cleaned + pool.rows_cleaned,
        },
        "pii": {
            "types": list(dc.pii_redact) + list(dc.pii_patterns),
            "redacted": _merged(held.pii, pool.pii),
        },
        "tokens": meter.summary() if meter else None,
        "truncated": meter.truncation() if meter else None,
        "sources": held.sources + pool.sources,
        "skipped_files": held.skipped_files + pool.skipped_files,
    }
    if keys.pairs:  # only then: other datasets' summaries stay as they were
        summary["preference_pairs"] = {
            "collected": keys.pairs,  # before deduplication and sampling
            "grouped_by_prompt": split_dc is not dc,
        }
    quarantine.close()
    commit(quarantine.path, folder / "quarantine.jsonl")
    write_jsonl(folder / "duplicates.jsonl", _duplicate_rows(duplicates, source_of))
    _write_folder(folder, cfg, summary, [held, pool])
    _report(console, folder, summary, quarantine, dc.max_seq_len)
    return PreparedDataset(folder, labels=labels, summary=summary)


@dataclass
class _Parked:
    """What pass 1 leaves besides the spool: counts, kept example ids, duplicates, split keys."""

    held: Collected  # rows of data.test_files
    pool: Collected  # rows of data.train_files
    held_ids: np.ndarray  # kept example ids (int64), in input order
    pool_ids: np.ndarray
    examples: int  # example ids run from 0 to this (duplicates removed included)
    duplicates: DedupResult
    keys: _SplitKeys


def _collect_and_deduplicate(
    cfg: RunConfig, strict: bool, tokenizer, spool: Spool, quarantine: QuarantineLog
) -> _Parked:
    """Pass 1, streaming: collect (in worker processes for large JSONL files), deduplicate, and
    park the kept examples in the spool; test files first, so a training row that repeats a
    test row is the one removed."""
    dc = cfg.data
    finder = DuplicateFinder(dc.dedup, dc.dedup_threshold)
    keys = _SplitKeys(dc.group_by is not None)
    held, pool = Collected(quarantine=quarantine), Collected(quarantine=quarantine)  # type: ignore[arg-type]
    kept_ids: list[np.ndarray] = []
    next_id = batches_done = 0
    for collected, paths in ((held, dc.test_files), (pool, dc.train_files)):
        part: list[np.ndarray] = []
        for batch in make_batches(
            cfg, strict, [cfg.resolve_path(p) for p in paths], collected, tokenizer
        ):
            collected.rows_read += batch.rows_read
            collected.rows_cleaned += batch.rows_cleaned
            collected.chunks_added += batch.chunks_added
            collected.pii.update(batch.pii)
            for entry in batch.quarantine:
                quarantine.append(entry)
            keep = np.asarray(finder.keep(len(batch), batch.sketches, batch.source), bool)
            kept = np.flatnonzero(keep)
            if dc.split == "stratified":
                _check_labelled(batch, kept)
            keys.add(batch.labels, batch.groups, batch.prompts)
            ids = next_id + kept
            spool.write(ids, batch.table if len(kept) == len(batch) else batch.table.filter(keep))
            part.append(ids)
            next_id += len(batch)
            batches_done += 1
            if batches_done % GC_EVERY_BATCHES == 0:
                gc.collect()  # the collector is paused (see `gc_paused`): clear any cycles now and then
        kept_ids.append(np.concatenate(part) if part else np.zeros(0, np.int64))
    spool.close()
    return _Parked(held, pool, kept_ids[0], kept_ids[1], next_id, finder.finish(), keys)


def _check_labelled(batch: Batch, kept: np.ndarray) -> None:
    for k in kept.tolist():
        if batch.labels[k] is None:
            raise DataError(
                f"{batch.source(k)}: data.split is 'stratified' but this row has no "
                "label; stratifying needs text+label data (or use data.split: random)"
            )


class _Unmeasured(Exception):
    """An example was offered that has not been read back and measured yet."""


def _split_with_token_check(
    units: tuple[Units, Units], dc, meter, spool: Spool, quarantine: QuarantineLog, strict: bool
) -> tuple[SplitIds, dict[int, Cut]]:
    """Split, offering each example to the token-length check as it is taken; returns the
    splits and, by example id, how the taken examples that were shortened to fit were cut.

    Only the front of each take order can be offered, so only that is read back from the spool
    and measured: all of it without `data.max_train_examples`, a little more than the quotas with
    it (doubled and retried in the rare case rejections use up the margin)."""
    pool_units, held_units = units
    measured: dict[int, Measured | Quarantined] = {}
    cuts: dict[int, Cut] = {}

    def probe(i: int, split: str) -> bool:
        result = measured.get(i)
        if result is None:
            raise _Unmeasured
        return not isinstance(result, Quarantined)

    def accept(i: int, split: str) -> bool:
        result = measured[i]
        if isinstance(result, Quarantined):
            quarantine.append(result)
            if strict:
                raise DataError(
                    f"{result.location}: {result.reason} (strict mode: stopping at the first bad row)"
                )
            return False
        meter.record(split, result)
        if result.cut is not None:
            cuts[i] = result.cut
        return True

    n_pool, n_held = len(pool_units), len(held_units)
    if dc.max_train_examples is None:
        front_pool = n_pool
    else:
        n_test = 0 if n_held else round(n_pool * dc.test_fraction) + 1
        front_pool = int(1.05 * (dc.max_train_examples * (1 + dc.val_fraction) + n_test)) + 64
    front_held = n_held if dc.max_test_examples is None else int(1.05 * dc.max_test_examples) + 64
    while True:
        wanted = np.concatenate([pool_units.order[:front_pool], held_units.order[:front_held]])
        wanted = wanted[~np.isin(wanted, np.fromiter(measured, np.int64, len(measured)))]
        for i, example in spool.examples(wanted):
            try:
                measured[i] = meter.encode(example)
            except RowError as e:
                measured[i] = Quarantined(example.source, str(e), e.problem)
        try:
            take_splits(pool_units, held_units, dc, probe)
            break
        except _Unmeasured:
            front_pool, front_held = 2 * front_pool, 2 * front_held
    return take_splits(pool_units, held_units, dc, accept), cuts


def _write_splits(
    folder: Path, spool: Spool, split_code: np.ndarray, cuts: dict[int, Cut]
) -> dict[str, int]:
    """Route every spooled example to its split's file (in input order), shortened where it was
    cut to fit; returns the sizes."""
    writers = {name: SplitWriter(folder / f"{name}.parquet") for name in SPLITS}
    try:
        for table in spool.tables():
            ids = table.column("id").to_numpy()
            codes = split_code[ids]
            if cuts and any(i in cuts for i in ids.tolist()):
                examples = table_examples(table)
                rows = examples_table(
                    [
                        cuts[i].apply(example) if i in cuts else example
                        for i, example in zip(ids.tolist(), examples, strict=True)
                    ]
                )
            else:
                rows = table.drop_columns(["id"])
            for code, name in enumerate(SPLITS):
                mask = codes == code
                if mask.any():
                    writers[name].write(rows.filter(mask))
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    return {name: writer.rows for name, writer in writers.items()}


def _spooled_sources(spool: Spool, ids: list[int]) -> dict[int, str]:
    """`file:line` of the given spooled examples."""
    if not ids:
        return {}
    wanted = np.asarray(ids, np.int64)
    sources: dict[int, str] = {}
    for table in spool.tables(["id", "source"]):
        mask = np.isin(table.column("id").to_numpy(), wanted)
        if mask.any():
            picked = table.filter(mask)
            sources.update(
                zip(
                    picked.column("id").to_pylist(),
                    picked.column("source").to_pylist(),
                    strict=True,
                )
            )
    return sources


def _label_summary(keys: _SplitKeys, ids: SplitIds) -> tuple[list[str] | None, dict | None]:
    """The label set (when every train and test example has a label) and counts per split."""
    codes = keys.labels()
    names = keys.label_names()
    if not len(codes):
        return None, None
    train_test = np.concatenate([codes[ids.train], codes[ids.test]])
    if len(train_test) == 0 or train_test.min() < 0:
        return None, None
    labels = sorted({names[c] for c in np.unique(train_test).tolist()})
    counts = {}
    for name in SPLITS:
        found, n = np.unique(codes[getattr(ids, name)], return_counts=True)
        pairs = sorted(
            zip(n.tolist(), (names[c] for c in found.tolist())), key=lambda p: (-p[0], p[1])
        )
        counts[name] = {label: count for count, label in pairs}
    return labels, counts


def _token_meter(cfg: RunConfig, tokenizer):
    from tunewright.data.token_stats import TokenMeter
    from tunewright.dataset.tokenize import ChatTokenizer

    chat = ChatTokenizer(tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
    return TokenMeter(chat, cfg.data.truncate)


def _merged(*counters: Counter) -> dict:
    return dict(sum(counters, Counter()).most_common())


def _leakage_summary(leaks, source_of: dict[int, str], mode: str) -> dict:
    if mode == "off":
        return {"checked": False, "note": "data.dedup is off, so leakage was not checked"}
    return {
        "checked": True,
        "val": sum(leak.split == "val" for leak in leaks),
        "test": sum(leak.split == "test" for leak in leaks),
        "examples": [
            {
                "split": leak.split,
                "source": source_of[leak.example],
                "train_source": source_of[leak.train_example],
            }
            for leak in leaks[:_LEAKS_LISTED]
        ],
    }


def _duplicate_rows(duplicates: DedupResult, source_of: dict[int, str]) -> Iterator[dict]:
    for cluster in duplicates.clusters:
        yield {
            "kept": source_of[cluster[0]],
            "duplicates": [
                {
                    "source": source_of[i],
                    "jaccard": round(duplicates.jaccard[i], 3),
                    "removed": i in duplicates.removed,
                }
                for i in cluster[1:]
            ],
        }


def _write_folder(folder: Path, cfg: RunConfig, summary: dict, collected: list[Collected]) -> None:
    """The manifest, the card and, last, the summary (the splits and side files are written)."""
    from tunewright.data.card import write_card

    manifest = _manifest(cfg, folder, [s["path"] for c in collected for s in c.sources])
    write_json(folder / "manifest.json", manifest)
    summary["input_hash"] = manifest["inputs"]["hash"]
    summary["manifest_hash"] = manifest["hash"]
    write_card(folder, summary)
    write_json(folder / SUMMARY_FILE, summary)


def _manifest(cfg: RunConfig, folder: Path, source_paths: list[str]) -> dict:
    """Content hashes: inputs (file bytes, in reading order), config (the data settings and the
    model whose tokenizer measured lengths) and outputs; `hash` combines the three."""
    inputs = [
        {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for s in source_paths
        for p in files_under(Path(s))
    ]
    config = {"data": cfg.data.model_dump(mode="json"), "model": cfg.model.name}
    outputs = {
        name: sha256_file(folder / name)
        for name in [*(f"{s}.parquet" for s in SPLITS), "quarantine.jsonl", "duplicates.jsonl"]
    }
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


def _report(
    console: Console, folder: Path, summary: dict, quarantine: QuarantineLog, max_seq_len: int
) -> None:
    for source in summary["sources"]:
        if "note" in source:
            console.print(f"[yellow]note:[/] {escape(source['path'])}: {escape(source['note'])}")
    if summary["skipped_files"]:
        console.print(
            f"[yellow]{len(summary['skipped_files'])} file(s) skipped[/] (no reader): {escape(', '.join(summary['skipped_files'][:5]))}"
        )
    if quarantine:
        console.print(
            f"[yellow]{len(quarantine)} row(s) quarantined[/] (see {escape(str(folder / 'quarantine.jsonl'))}):"
        )
        for q in quarantine.first:
            console.print(f"  {escape(q.location)}: {escape(q.reason)}")
    truncated = summary["truncated"]
    if truncated and truncated["examples"]:
        per_split = ", ".join(f"{n:,} {split}" for split, n in truncated["by_split"].items())
        console.print(
            f"{truncated['examples']:,} example(s) over data.max_seq_len={max_seq_len} shortened "
            f"to fit ({per_split}; {truncated['tokens_removed']:,} tokens of user text cut, "
            f"data.truncate={truncated['mode']})"
        )
    elif (
        quarantine.by_problem["over the token limit"] and truncated and truncated["mode"] == "none"
    ):
        console.print(
            "  [dim]to shorten long inputs instead, set data.truncate: input_end (or input_start, "
            "input_middle): the user text is cut to fit, the answer kept whole[/]"
        )
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
