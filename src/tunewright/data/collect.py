"""Collect: read a recipe's data paths into validated, cleaned, redacted `Example`s.

Row by row: read (bad bytes and broken syntax are caught by the readers) -> rename columns ->
detect the format once per source -> normalise and validate -> clean -> redact PII -> cut long
raw texts into pieces. A row that fails any step becomes a `Quarantined` entry with its
`file:line` and reason; in strict mode the first one stops the run.
"""

from __future__ import annotations

import gc
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunewright.config import DataConfig
from tunewright.data.clean import Cleaner
from tunewright.data.formats import NORMALISERS, detect_format, rename_columns
from tunewright.data.pii import PiiRedactor
from tunewright.data.quarantine import Quarantined, RowError
from tunewright.data.readers import Row
from tunewright.data.sources import Source, expand
from tunewright.dataset.example import Example, Message
from tunewright.errors import DataError

Chunker = Callable[[Example], list[Example]]
BATCH_ROWS = 4096  # examples per yielded batch: large enough for numpy, small in memory


@dataclass
class Collected:
    """What collection produced from a list of recipe paths, and what it set aside."""

    examples: list[Example] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)  # or a QuarantineLog
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
        """Everything at once, in `Collected.examples` and `.quarantine` (small inputs, tests)."""
        out = Collected()
        with gc_paused():
            for batch in self.stream(paths, out):
                out.examples += batch
        return out

    def stream(self, paths: list[Path], out: Collected) -> Iterator[list[Example]]:
        """Yield the examples in batches of about `BATCH_ROWS`, in input order, so memory stays
        bounded; quarantined rows go to `out.quarantine` (a list or a `QuarantineLog`) and the
        counts to `out`."""
        self.pii = out.pii
        for path in paths:
            expanded = expand(path)
            out.skipped_files += [str(p) for p in expanded.skipped]
            for source in expanded.sources:
                yield from self._collect_source(source, out)

    def source_info(self, source: Source) -> dict:
        """The summary entry of a source: path, format (None until detected), rows, note."""
        fmt = source.format or (None if self.dc.format == "auto" else self.dc.format)
        return {"path": str(source.path), "format": fmt, "rows": 0}

    def _collect_source(self, source: Source, out: Collected) -> Iterator[list[Example]]:
        info = self.source_info(source)
        out.sources.append(info)
        yield from self.collect_rows(source.rows(), info, out)

    def collect_rows(
        self, source_rows: Iterable[Row], info: dict, out: Collected
    ) -> Iterator[list[Example]]:
        """The rows of one source (`info`, whose format is set once detected) as examples, in
        batches of about `BATCH_ROWS`; counts and quarantined rows go to `out` (which the caller
        may empty between batches)."""
        fmt = info["format"]
        rows = 0  # of this call, added to info["rows"] at each yield
        group_by, columns, clean, redactor = (
            self.dc.group_by,
            self.dc.columns,
            self.clean,
            self.redactor,
        )
        transform = self._transform if redactor is not None else clean
        # Most chat text is printable ASCII with nothing for any step to do: one regex scan tells.
        quick = _QUICK_SKIP if redactor is None or not redactor.scans_every_text else None
        normalise = NORMALISERS[fmt] if fmt is not None else None
        batch: list[Example] = []
        for row in source_rows:
            out.rows_read += 1
            rows += 1
            try:
                if row.error is not None:
                    raise RowError(row.error, row.problem)
                data = rename_columns(row.data, columns) if columns else row.data
                if normalise is None:
                    fmt = info["format"] = detect_format(set(data), row.location)
                    normalise = NORMALISERS[fmt]
                    if fmt == "text" and len(data) > 1:
                        others = ", ".join(sorted(k for k in data if k != "text"))
                        info["note"] = (
                            f"read as raw text (continued pre-training); columns {others} are "
                            "ignored. If one is the label, map it: data.columns: {label: <column>}"
                        )
                example = normalise(data, row.location)
                if group_by:
                    example = replace(example, meta={"group": _group_key(data, group_by)})
                if transform is not None and not (quick is not None and _untouched(example, quick)):
                    cleaned = _map_texts(example, transform)
                    out.rows_cleaned += cleaned is not example
                    example = cleaned
                if example.text is not None and self.chunker is not None:
                    pieces = self.chunker(example)
                    out.chunks_added += len(pieces) - 1
                    batch += pieces
                else:
                    batch.append(example)
            except RowError as e:
                out.quarantine.append(Quarantined(row.location, self._reason(e), e.problem))
                if self.strict:
                    raise DataError(
                        f"{row.location}: {self._reason(e)} (strict mode: stopping at the first bad row)"
                    ) from None
            if len(batch) >= BATCH_ROWS:
                info["rows"] += rows
                rows = 0
                yield batch
                batch = []
        info["rows"] += rows
        if batch:
            yield batch

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


# A text that matches nothing here and has no space at either end is left as it is by every
# cleaning step (they act on control characters, non-ASCII, "&", "<" and edge whitespace) and
# by every built-in PII type (each needs a digit or "@").
_QUICK_SKIP = re.compile(r"[^ -~]|[&<0-9@]")


def _untouched(example: Example, quick: re.Pattern[str]) -> bool:
    """Whether cleaning and redaction certainly leave the example's texts as they are."""
    search = quick.search
    if example.text is not None:
        text = example.text
        return search(text) is None and text[:1] != " " and text[-1:] != " "
    for m in example.messages:
        text = m.content
        if search(text) is not None or text[:1] == " " or text[-1:] == " ":
            return False
    text = example.rejected
    if text is not None and (search(text) is not None or text[:1] == " " or text[-1:] == " "):
        return False
    return True


def _group_key(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f"field '{column}' (data.group_by): missing", "missing field")
    if isinstance(value, (dict, list)):
        raise RowError(
            f"field '{column}' (data.group_by): expected a value, got {type(value).__name__}",
            "wrong type",
        )
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
                raise RowError(
                    f"field 'messages[{i}].content': empty after cleaning", "empty content"
                )
            changed = changed or list(messages)
            changed[i] = Message(m.role, content, m.weight)
    if example.rejected is not None:  # a pair's rejected answer is cleaned like the chosen one
        rejected = fn(example.rejected)
        if not rejected.strip():
            raise RowError("field 'rejected': empty after cleaning", "empty content")
        if rejected == (changed or messages)[-1].content:
            raise RowError(
                "field 'rejected': identical to the chosen answer after cleaning",
                "identical chosen and rejected",
            )
        if rejected != example.rejected:
            return replace(example, messages=tuple(changed or messages), rejected=rejected)
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
