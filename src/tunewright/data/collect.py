"""Collect: read a recipe's data paths into validated, cleaned, redacted `Example`s.

Row by row: read (bad bytes and broken syntax are caught by the readers) -> rename columns ->
detect the format once per source -> normalise and validate -> clean -> redact PII -> cut long
raw texts into pieces. A row that fails any step becomes a `Quarantined` entry with its
`file:line` and reason; in strict mode the first one stops the run.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunewright.config import DataConfig
from tunewright.data.clean import Cleaner
from tunewright.data.example import Example, Message
from tunewright.data.formats import NORMALISERS, detect_format, rename_columns
from tunewright.data.pii import PiiRedactor
from tunewright.data.quarantine import Quarantined, RowError
from tunewright.data.sources import Source, expand
from tunewright.errors import DataError

Chunker = Callable[[Example], list[Example]]


@dataclass
class Collected:
    """What collection produced from a list of recipe paths, and what it set aside."""

    examples: list[Example] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    rows_read: int = 0
    chunks_added: int = 0  # extra examples made by cutting long texts
    rows_cleaned: int = 0  # rows whose text a cleaning step changed
    pii: Counter = field(default_factory=Counter)  # placeholder type -> replacements
    sources: list[dict] = field(default_factory=list)  # per file: path, format, rows, note
    skipped_files: list[str] = field(default_factory=list)


class Collector:
    """Reads and prepares rows with one recipe's settings; `collect` per list of paths."""

    def __init__(self, dc: DataConfig, *, strict: bool, chunker: Chunker | None = None) -> None:
        self.dc = dc
        self.strict = strict
        self.chunker = chunker
        cleaner = Cleaner(dc.clean)
        self.clean = cleaner.clean if cleaner else None
        wants_pii = dc.pii_redact or dc.pii_patterns
        self.redactor = PiiRedactor(dc.pii_redact, dc.pii_patterns) if wants_pii else None
        self.pii: Counter = Counter()  # of the current `collect` call

    def collect(self, paths: list[Path]) -> Collected:
        out = Collected()
        self.pii = out.pii
        with gc_paused():
            for path in paths:
                expanded = expand(path)
                out.skipped_files += [str(p) for p in expanded.skipped]
                for source in expanded.sources:
                    self._collect_source(source, out)
        return out

    def _collect_source(self, source: Source, out: Collected) -> None:
        fmt = source.format or (None if self.dc.format == "auto" else self.dc.format)
        info = {"path": str(source.path), "format": fmt, "rows": 0}
        out.sources.append(info)
        rows_before = out.rows_read
        for row in source.rows():
            out.rows_read += 1
            try:
                if row.error is not None:
                    raise RowError(row.error, row.problem)
                data = rename_columns(row.data, self.dc.columns)
                if fmt is None:
                    fmt = info["format"] = detect_format(set(data), row.location)
                    if fmt == "text" and len(data) > 1:
                        others = ", ".join(sorted(k for k in data if k != "text"))
                        info["note"] = (
                            f"read as raw text (continued pre-training); columns {others} are "
                            "ignored. If one is the label, map it: data.columns: {label: <column>}"
                        )
                example = NORMALISERS[fmt](data)
                meta = {"group": _group_key(data, self.dc.group_by)} if self.dc.group_by else example.meta
                # the constructor, not dataclasses.replace: this runs once per row
                example = Example(example.messages, example.text, example.label, row.location, meta)
                if self.clean is not None or self.redactor is not None:
                    cleaned = _map_texts(example, self._transform)
                    out.rows_cleaned += cleaned is not example
                    example = cleaned
                if example.text is not None and self.chunker is not None:
                    pieces = self.chunker(example)
                    out.chunks_added += len(pieces) - 1
                    out.examples += pieces
                else:
                    out.examples.append(example)
            except RowError as e:
                out.quarantine.append(Quarantined(row.location, self._reason(e), e.problem))
                if self.strict:
                    raise DataError(
                        f"{row.location}: {out.quarantine[-1].reason} (strict mode: stopping at the first bad row)"
                    ) from None
        info["rows"] = out.rows_read - rows_before

    def _reason(self, error: RowError) -> str:
        theirs = self.dc.columns.get(error.field) if error.field else None
        if theirs is not None:  # the field was looked up under the user's column name
            return f"{error} (data.columns maps it to your column '{theirs}')"
        return str(error)

    def _transform(self, text: str) -> str:
        """Clean, then redact, one text."""
        if self.clean is not None:
            text = self.clean(text)
        if self.redactor is not None:
            found = self.redactor.find(text)  # most texts have none: no Counter, no copy
            if found:
                pieces, position = [], 0
                for match in found:
                    pieces += [text[position : match.start], f"[{match.kind}]"]
                    self.pii[match.kind] += 1
                    position = match.end
                pieces.append(text[position:])
                text = "".join(pieces)
        return text


def _group_key(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f"field '{column}' (data.group_by): missing", "missing field")
    if isinstance(value, (dict, list)):
        raise RowError(f"field '{column}' (data.group_by): expected a value, got {type(value).__name__}", "wrong type")
    return str(value)


def _map_texts(example: Example, fn: Callable[[str], str]) -> Example:
    """`example` with `fn` applied to its texts (not to a label), or itself if nothing changed.

    Raises RowError when a text that had content is left empty.
    """
    if example.text is not None:
        text = fn(example.text)
        if text == example.text:
            return example
        if not text.strip():
            raise RowError("field 'text': empty after cleaning", "empty content")
        return replace(example, text=text)
    messages = example.messages
    # a label is the answer itself: cleaning or redacting it would change the task
    last = len(messages) - 1 if example.label is not None else len(messages)
    changed = None
    for i, m in enumerate(messages[:last]):
        content = fn(m.content)
        if content != m.content:
            if not content.strip():
                raise RowError(f"field 'messages[{i}].content': empty after cleaning", "empty content")
            changed = changed or list(messages)
            changed[i] = Message(m.role, content, m.weight)
    return example if changed is None else replace(example, messages=tuple(changed))


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while millions of small acyclic objects are built:
    its full collections rescan every live object (each example is ~5 objects) and made
    collection ~2x slower. Nesting is fine: only the outermost pause re-enables it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
