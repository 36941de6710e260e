"""The dataset folder on disk: Parquet splits, JSON/JSONL side files, content hashes.

Every write is atomic (temporary file, fsync, rename), so a crash never leaves a half-written
split that looks complete. Splits are Parquet with one fixed schema; writing the same examples
gives the same bytes, which is what makes the manifest's output hash reproducible.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from tunewright.dataset.example import Example, Message
from tunewright.files import atomic_path, commit, temporary_path, write_json_atomic

_BATCH_ROWS = 65_536
_HASH_CHUNK = 1 << 20


def _schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.float64())])
    return pa.schema(
        [
            ("source", pa.string()),
            ("messages", pa.list_(message)),
            ("text", pa.string()),
            ("label", pa.string()),
            ("meta", pa.string()),  # JSON: the meta dict's keys vary between datasets
            ("rejected", pa.string()),  # preference pairs: the rejected final answer, else null
        ]
    )


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(path: Path, value: object) -> None:
    write_json_atomic(path, value)


def _table(examples: list[Example], schema):
    """A pyarrow table of examples, built column by column: the messages column from flat
    arrays and offsets, ~10x faster than converting a list of dicts per row."""
    import pyarrow as pa

    offsets, roles, contents, weights = [0], [], [], []
    has_messages = []
    for e in examples:
        for m in e.messages:
            roles.append(m.role)
            contents.append(m.content)
            weights.append(m.weight)
        offsets.append(len(roles))
        has_messages.append(bool(e.messages))
    message_type = schema.field("messages").type
    messages = pa.StructArray.from_arrays(
        [
            pa.array(roles, pa.string()),
            pa.array(contents, pa.string()),
            pa.array(weights, pa.float64()),
        ],
        fields=list(message_type.value_type),
    )
    mask = pa.array([not has for has in has_messages], pa.bool_())  # raw texts: null, not []
    columns = [
        pa.array([e.source for e in examples], pa.string()),
        pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), messages, type=message_type, mask=mask
        ),
        pa.array([e.text for e in examples], pa.string()),
        pa.array([e.label for e in examples], pa.string()),
        pa.array(
            [json.dumps(e.meta, sort_keys=True) if e.meta else None for e in examples], pa.string()
        ),
        pa.array([e.rejected for e in examples], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def examples_table(examples: list[Example]):
    """The examples as a pyarrow table with the split schema."""
    return _table(examples, _schema())


def write_split(path: Path, examples: list[Example]) -> None:
    """Write examples as a Parquet file."""
    import pyarrow.parquet as pq

    schema = _schema()
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, max(len(examples), 1), _BATCH_ROWS):
            batch = examples[start : start + _BATCH_ROWS]
            writer.write_table(_table(batch, schema))


class SplitWriter:
    """Writes a split's Parquet file as tables arrive, in row groups of `_BATCH_ROWS`, so a
    split never has to be held in memory. The file appears (atomically) on `close`."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.rows = 0
        self._path, self._tmp = path, temporary_path(path)
        self._schema = _schema()
        self._writer = pq.ParquetWriter(self._tmp, self._schema)
        self._pending: list = []
        self._pending_rows = 0

    def write(self, table) -> None:
        """Append rows (a table with the split schema's columns, in order)."""
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self.rows += table.num_rows
        if self._pending_rows >= _BATCH_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self._pending) if self._pending else self._schema.empty_table()
        # Full row groups only, until the end: the file's bytes then do not depend on how the
        # rows arrived, and the content hash is reproducible.
        cut = table.num_rows if final else table.num_rows - table.num_rows % _BATCH_ROWS
        if cut or final:
            self._writer.write_table(
                table.slice(0, cut).combine_chunks(), row_group_size=_BATCH_ROWS
            )
        rest = table.slice(cut)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        self._writer.close()
        commit(self._tmp, self._path)

    def abort(self) -> None:
        """Drop the unfinished file."""
        self._writer.close()
        self._tmp.unlink(missing_ok=True)


class Spool:
    """Examples parked on disk between preparation's passes, each with its example id.

    An Arrow IPC file, uncompressed: writing and reading it is little more than a copy (Parquet's
    encoding cost ~1 s per 200 MB each way, for a file that lives a minute)."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path = path
        self.rows = 0
        self._schema = _schema().append(pa.field("id", pa.int64()))
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)

    def write(self, ids, table) -> None:
        """Append `table` (the split schema's columns) with the example ids (a numpy array)."""
        import pyarrow as pa

        if table.num_rows:
            table = table.append_column("id", pa.array(ids, pa.int64()))
            self._writer.write_table(table, max_chunksize=table.num_rows)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def tables(self, columns: list[str] | None = None) -> Iterator:
        """The spooled rows, a written batch at a time, as pyarrow tables."""
        import pyarrow as pa

        # Read, not memory-mapped: mapped pages would count as this process's memory.
        with pa.OSFile(str(self.path), "rb") as source:
            reader = pa.ipc.open_file(source)
            for k in range(reader.num_record_batches):
                batch = reader.get_batch(k)
                table = pa.Table.from_batches([batch])
                yield table.select(columns) if columns else table

    def examples(self, wanted) -> Iterator[tuple[int, Example]]:
        """`(id, example)` for the spooled examples whose id is in `wanted` (a numpy array)."""
        import numpy as np

        for table in self.tables():
            mask = np.isin(table.column("id").to_numpy(), wanted)
            if mask.any():
                picked = table.filter(mask)
                yield from zip(picked.column("id").to_pylist(), table_examples(picked), strict=True)


def table_examples(table) -> list[Example]:
    """The examples of a table with the split schema (the `id` column, if any, is ignored)."""
    examples = []
    for row in table.to_pylist():
        messages = tuple(
            Message(m["role"], m["content"], m["weight"]) for m in row["messages"] or ()
        )
        meta = json.loads(row["meta"]) if row["meta"] else {}
        # `.get`: dataset folders written before preference pairs have no `rejected` column
        examples.append(
            Example(messages, row["text"], row["label"], row["source"], meta, row.get("rejected"))
        )
    return examples


def read_split(path: Path, limit: int | None = None) -> list[Example]:
    """Read a split written by `write_split` (or a `.jsonl` split of older dataset folders);
    `limit` reads only the first rows."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [Example.from_json(json.loads(line)) for line in islice(f, limit)]
    import pyarrow.parquet as pq

    examples: list[Example] = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS):
        examples += table_examples(batch)
        if limit is not None and len(examples) >= limit:
            return examples[:limit]
    return examples


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(path: Path) -> list[Path]:
    """A file, or every file under a folder (sorted): what a source's content hash covers."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())
