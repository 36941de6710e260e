"""The dataset folder on disk: Parquet splits, JSON/JSONL side files, content hashes.

Every write is atomic (temporary file, fsync, rename), so a crash never leaves a half-written
split that looks complete. Splits are Parquet with one fixed schema; writing the same examples
gives the same bytes, which is what makes the manifest's output hash reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tunewright.data.example import Example, Message

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
        ]
    )


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `path`."""
    # unique per writer: two processes preparing the same folder must not share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(path: Path, value: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
        [pa.array(roles, pa.string()), pa.array(contents, pa.string()), pa.array(weights, pa.float64())],
        fields=list(message_type.value_type),
    )
    mask = pa.array([not has for has in has_messages], pa.bool_())  # raw texts: null, not []
    columns = [
        pa.array([e.source for e in examples], pa.string()),
        pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), messages, type=message_type, mask=mask),
        pa.array([e.text for e in examples], pa.string()),
        pa.array([e.label for e in examples], pa.string()),
        pa.array([json.dumps(e.meta, sort_keys=True) if e.meta else None for e in examples], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_split(path: Path, examples: list[Example]) -> None:
    """Write examples as a Parquet file."""
    import pyarrow.parquet as pq

    schema = _schema()
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, max(len(examples), 1), _BATCH_ROWS):
            batch = examples[start : start + _BATCH_ROWS]
            writer.write_table(_table(batch, schema))


def read_split(path: Path) -> list[Example]:
    """Read a split written by `write_split` (or a `.jsonl` split of older dataset folders)."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [Example.from_json(json.loads(line)) for line in f]
    import pyarrow.parquet as pq

    examples = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist():
            messages = tuple(Message(m["role"], m["content"], m["weight"]) for m in row["messages"] or ())
            meta = json.loads(row["meta"]) if row["meta"] else {}
            examples.append(Example(messages, row["text"], row["label"], row["source"], meta))
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
