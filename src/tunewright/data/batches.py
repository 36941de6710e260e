"""Batches: collection's examples made ready for the single-threaded stages, in worker processes
when a JSONL input is large enough to pay for them.

A `Batch` is what preparation's main loop needs of a run of consecutive rows: the examples as a
pyarrow table (the spool's columns), their dedup sketches (digest + MinHash signature), labels and
group keys, the quarantined rows and the counts. Everything in it depends only on those rows, so
batches can be made anywhere; the main process then deduplicates and spools them in input order.

JSONL files of at least `PARALLEL_MIN_BYTES` are cut into blocks of whole lines (`BLOCK_BYTES`)
that `WORKERS` forked processes turn into batches. At most `2 * WORKERS` blocks are in flight, so
memory stays bounded, and results are taken in block order, so the output is the same as in one
process (the tests check). Other inputs, and the first rows of a JSONL file until its format is
known, are made in the main process. Per-row work (parse, validate, clean, redact, normalise and
hash for dedup, build the Arrow columns) is ~2/3 of preparation's CPU time (1M short chat rows:
40 s in the workers, 23 s in the main process, which then deduplicates, spools and writes), so
the three processes keep two cores busy.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tunewright.config import RunConfig
from tunewright.data.collect import Collected, Collector
from tunewright.data.dedup import Deduplicator, Sketches
from tunewright.data.duplicates import dedup_text
from tunewright.data.quarantine import Quarantined
from tunewright.data.readers import Row, jsonl_rows, read_jsonl
from tunewright.data.sources import expand
from tunewright.dataset.example import Example
from tunewright.dataset.store import examples_table

# The cyclic garbage collector is paused while preparing (allocation-driven collections cost ~40%
# of the CPU time, see `collect.gc_paused`); a full collection this often keeps memory bounded.
GC_EVERY_BATCHES = 64
BLOCK_BYTES = 1 << 20  # ~5,000 short chat rows: small enough to keep both workers busy
PARALLEL_MIN_BYTES = 32 << 20  # below this, starting the workers (~1 s) is not worth it
# Two, not one per core: the main process also needs a core for deduplication and writing.
WORKERS = min(
    2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)


@dataclass
class Batch:
    table: object  # pyarrow.Table of the examples (the spool's columns but `id`)
    sketches: Sketches | None  # None when deduplication is off
    labels: list[str | None]
    groups: list[str] | None  # with data.group_by
    quarantine: list[Quarantined] = field(default_factory=list)
    rows_read: int = 0
    rows_cleaned: int = 0
    chunks_added: int = 0
    pii: dict = field(default_factory=dict)
    format: str | None = None  # the source's format, once detected
    note: str | None = None
    # Per example, a preference pair's prompt key (`prompt_key`), None for other examples:
    # pairs sharing a prompt are kept in one split.
    prompts: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return self.table.num_rows

    def source(self, k: int) -> str:
        """`file:line` of the k-th example."""
        return self.table.column("source")[k].as_py()


class BatchMaker:
    """Makes batches with one recipe's settings (in the main process or a worker)."""

    def __init__(
        self, cfg: RunConfig, strict: bool, tokenizer: Callable[[], object] | None = None
    ) -> None:
        dc = cfg.data
        self.grouped = dc.group_by is not None
        tokenizer = tokenizer or cache(lambda: load_tokenizer(cfg))  # loaded only to cut long texts
        chunker = cache(lambda: _text_chunker(tokenizer(), dc.max_seq_len))
        self.collector = Collector(dc, strict=strict, chunker=lambda e: chunker().chunk(e))
        self.deduplicator = (
            Deduplicator(threshold=dc.dedup_threshold) if dc.dedup != "off" else None
        )

    def _batch(self, examples: list[Example], out: Collected, info: dict) -> Batch:
        """A batch of `examples` and what `out` gathered since the last one (then emptied)."""
        batch = Batch(
            examples_table(examples),
            self.deduplicator.sketch([dedup_text(e) for e in examples])
            if self.deduplicator
            else None,
            [e.label for e in examples],
            [e.meta["group"] for e in examples] if self.grouped else None,
            list(out.quarantine),
            out.rows_read,
            out.rows_cleaned,
            out.chunks_added,
            dict(out.pii),
            info["format"],
            info.get("note"),
            [prompt_key(e) if e.is_preference else None for e in examples],
        )
        out.quarantine.clear()
        out.pii.clear()
        out.rows_read = out.rows_cleaned = out.chunks_added = 0
        return batch

    def rows_batches(self, rows: Iterable[Row], info: dict) -> Iterator[Batch]:
        """Batches of some rows of one source; `info["format"]` is set once detected."""
        out = Collected()
        self.collector.pii = out.pii
        for examples in self.collector.collect_rows(rows, info, out):
            yield self._batch(examples, out, info)
        if out.rows_read:
            yield self._batch([], out, info)  # trailing bad rows: their quarantine and counts

    def block_batch(self, block: bytes, first_line: int, path: str, fmt: str | None) -> Batch:
        """One batch of a block of whole JSONL lines (rows in the main process until the
        format is known)."""
        info = {"path": path, "format": fmt, "rows": 0}
        batches = list(self.rows_batches(jsonl_rows(_lines(block), f"{path}:", first_line), info))
        if not batches:  # blank lines only
            return self._batch([], Collected(), info)
        return batches[0] if len(batches) == 1 else _merge(batches)


def make_batches(
    cfg: RunConfig, strict: bool, paths: list[Path], out: Collected, tokenizer: Callable[[], object]
) -> Iterator[Batch]:
    """Every batch of the given recipe paths, in input order. Each source's summary entry is
    added to `out.sources` (and kept up to date), files no reader reads to `out.skipped_files`;
    the batches carry the row counts and quarantined rows."""
    maker = BatchMaker(cfg, strict, tokenizer)
    for path in paths:
        expanded = expand(path)
        out.skipped_files += [str(p) for p in expanded.skipped]
        for source in expanded.sources:
            info = maker.collector.source_info(source)
            out.sources.append(info)
            parallel = (
                source.read is read_jsonl
                and WORKERS > 1
                and source.path.stat().st_size >= PARALLEL_MIN_BYTES
            )
            if parallel:
                yield from _parallel_jsonl(cfg, strict, maker, source.path, info)
            else:
                yield from maker.rows_batches(source.rows(), info)


def _blocks(path: Path) -> Iterator[tuple[bytes, int]]:
    """`(block of whole lines, number of its first line)`; the last may lack its newline."""
    line = 1
    with path.open("rb") as f:
        while block := f.read(BLOCK_BYTES):
            if not block.endswith(b"\n"):
                block += f.readline()  # the rest of the last line
            yield block, line
            line += block.count(b"\n")


def _parallel_jsonl(
    cfg: RunConfig, strict: bool, maker: BatchMaker, path: Path, info: dict
) -> Iterator[Batch]:
    blocks = _blocks(path)
    # Until the format is known (the first row that has one), blocks are made here: the rows
    # after it must all be read in that format.
    for block, first_line in blocks:
        batch = maker.block_batch(block, first_line, str(path), info["format"])
        info["format"] = batch.format
        info["rows"] += batch.rows_read
        if batch.note:
            info["note"] = batch.note
        yield batch
        if info["format"] is not None:
            break
    # fork, not spawn: spawn re-imports the caller's __main__, which breaks any script that
    # calls `prepare` without an `if __name__ == "__main__"` guard. The workers only parse and
    # hash (no torch, no thread pools), which is what makes forking a threaded parent safe.
    # A worker that dies (killed for memory, say) raises BrokenProcessPool here rather than
    # leaving its block unanswered, which is why this is not a multiprocessing.Pool.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        WORKERS, mp_context=context, initializer=_start_worker, initargs=(cfg, strict)
    ) as pool:
        pending: deque = deque()
        try:
            for block, first_line in blocks:
                pending.append(pool.submit(_work, block, first_line, str(path), info["format"]))
                if len(pending) >= 2 * WORKERS:
                    yield _counted(pending.popleft().result(), info)
            while pending:
                yield _counted(pending.popleft().result(), info)
        finally:
            for future in pending:  # on an error: drop the blocks not started yet
                future.cancel()


def _counted(batch: Batch, info: dict) -> Batch:
    info["rows"] += batch.rows_read
    return batch


def _lines(block: bytes) -> list[bytes]:
    """The lines of a block with their newlines, as reading the file gives them (a JSON error
    inside an unterminated string names the newline, so it must be there)."""
    lines = [line + b"\n" for line in block.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _merge(batches: list[Batch]) -> Batch:
    import numpy as np
    import pyarrow as pa

    sketches = None
    if batches[0].sketches is not None:
        sketches = Sketches(
            b"".join(b.sketches.digests for b in batches),
            np.concatenate([b.sketches.signatures for b in batches]),
            np.concatenate([b.sketches.has_tokens for b in batches]),
        )
    pii: dict = {}
    for b in batches:
        for kind, n in b.pii.items():
            pii[kind] = pii.get(kind, 0) + n
    return Batch(
        pa.concat_tables([b.table for b in batches]),
        sketches,
        [label for b in batches for label in b.labels],
        [g for b in batches for g in b.groups] if batches[0].groups is not None else None,
        [q for b in batches for q in b.quarantine],
        sum(b.rows_read for b in batches),
        sum(b.rows_cleaned for b in batches),
        sum(b.chunks_added for b in batches),
        pii,
        batches[-1].format,
        next((b.note for b in batches if b.note), None),
        [p for b in batches for p in b.prompts],
    )


def prompt_key(example: Example) -> int:
    """A non-negative 63-bit hash of a pair's prompt (roles and texts): a few bytes an example
    instead of the prompt, enough to keep the pairs of one prompt together."""
    digest = hashlib.blake2b(digest_size=8)
    for m in example.prompt_messages:
        digest.update(f"{m.role}\x00{m.content}\x01".encode())
    return int.from_bytes(digest.digest(), "little") >> 1


_MAKER: BatchMaker | None = None  # the worker process's own
_BLOCKS_DONE = 0


def _start_worker(cfg: RunConfig, strict: bool) -> None:
    global _MAKER
    _MAKER = BatchMaker(cfg, strict)
    gc.disable()  # as in the parent (inherited when forked; said here so it holds for any start)


def _work(block: bytes, first_line: int, path: str, fmt: str) -> Batch:
    global _BLOCKS_DONE
    _BLOCKS_DONE += 1
    if _BLOCKS_DONE % GC_EVERY_BATCHES == 0:
        gc.collect()
    return _MAKER.block_batch(block, first_line, path, fmt)


def load_tokenizer(cfg: RunConfig):
    """The recipe model's tokenizer."""
    from tunewright.models import load_tokenizer as load

    return load(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)


def _text_chunker(tokenizer, max_seq_len: int):
    from tunewright.data.chunk import TextChunker

    return TextChunker(tokenizer, max_seq_len)
