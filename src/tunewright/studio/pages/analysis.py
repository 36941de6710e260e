"""What the data stage makes of an uploaded file, for the Data page: the file is prepared exactly
as a job on it would prepare it (the same run config, `data.prepare`), once per content, into
`<home>/analysis/<sha256>/`; the page then reads that folder's `summary.json` and quarantine and
renders a few training examples with `data inspect`'s own token rendering."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup, escape
from rich.console import Console

from tunewright.data.inspect import inspect_examples, render_tokens
from tunewright.data.pii import PiiRedactor
from tunewright.data.prepare import prepare
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.runs import RunFolder, open_prepared
from tunewright.studio.protocol import JobCreate
from tunewright.studio.recipe import job_config
from tunewright.studio.state import Studio
from tunewright.studio.store import FileRecord
from tunewright.studio.uploads import content_path

CHATS_SHOWN = 3
QUARANTINE_SHOWN = 50
PII_SCANNED = 50_000  # examples scanned for PII (the data stage only counts what it redacts)
LISTED = 20  # duplicate clusters and leaks listed
ANALYSIS_DIR = "analysis"  # under the studio home: one prepared folder per analysed content
_preparing = threading.Lock()  # one preparation at a time: it uses both cores while it runs
ANALYSES_KEPT = 16  # analyses kept in memory, so reopening a file's page is instant
_analysed: dict[str, Analysis] = {}  # file id -> its analysis, oldest first


@dataclass
class Analysis:
    summary: dict
    quarantine: list[dict]
    duplicates: list[dict]
    chats: list[dict] = field(default_factory=list)  # {source, tokens, trained, html}
    eos_token: str | None = None
    eos_ok: bool = True
    eos_checked: int = 0
    pii_found: dict[str, int] = field(default_factory=dict)  # PII type -> occurrences
    pii_scanned: int = 0  # examples scanned for PII
    histogram: list[dict] = field(default_factory=list)  # {low, high, count, percent}


def analyse(studio: Studio, record: FileRecord) -> Analysis:
    """Prepare the file (once per content) and read what the data stage found."""
    if record.id in _analysed:  # a file never changes: its analysis neither
        return _analysed[record.id]
    base_name = studio.base_names()[0]
    cfg = job_config(
        JobCreate(model=base_name, training_file=record.id),
        job_id=f"data-{record.sha256[:24]}",
        seed=0,
        model_source=studio.base_model(base_name).source,
        training_path=content_path(studio.files_dir, record.sha256),
        validation_path=None,
        runs_dir=studio.settings.home_dir / ANALYSIS_DIR,
    )
    with _preparing:
        if not RunFolder(cfg.run_dir).has_prepared_data():
            prepare(cfg, console=Console(file=io.StringIO()))
    dataset = open_prepared(cfg.run_dir)
    data_dir = RunFolder(cfg.run_dir).data_dir
    shown = _Labels(studio, record)
    summary = shown.summary(dataset.summary)
    analysis = Analysis(
        summary,
        [shown.row(r) for r in _read_jsonl(data_dir / "quarantine.jsonl", QUARANTINE_SHOWN)],
        [shown.cluster(r) for r in _read_jsonl(data_dir / "duplicates.jsonl", LISTED)],
        histogram=_histogram(summary.get("tokens")),
    )
    chat = ChatTokenizer(studio.models.tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
    train = dataset.split("train")
    # the EOS check of `data inspect`, its printing sent nowhere
    report = inspect_examples(chat, train, Console(file=io.StringIO()), show=0)
    analysis.eos_token, analysis.eos_ok, analysis.eos_checked = (
        report.eos_token,
        report.eos_ok,
        report.checked,
    )
    analysis.pii_found, analysis.pii_scanned = pii_counts(
        [e for split in ("train", "val", "test") for e in dataset.split(split)][:PII_SCANNED]
    )
    for example in train[:CHATS_SHOWN]:
        encoded = chat.encode_example(example)
        analysis.chats.append(
            {
                "source": shown.location(example.source),
                "tokens": len(encoded.input_ids),
                "trained": encoded.num_trained_tokens,
                "html": tokens_html(chat, encoded),
            }
        )
    _analysed[record.id] = analysis
    while len(_analysed) > ANALYSES_KEPT:
        _analysed.pop(next(iter(_analysed)))  # the oldest
    return analysis


def tokens_html(chat: ChatTokenizer, encoded) -> Markup:
    """`data inspect`'s rendering (render_tokens) as HTML: trained tokens highlighted, the rest
    dimmed, one span per token."""
    text = render_tokens(chat, encoded)
    parts = []
    for span in text.spans:
        piece = text.plain[span.start : span.end]
        kind = "trained" if "bold" in str(span.style) else "masked"
        parts.append(f'<span class="{kind}">{escape(piece)}</span>')
    return Markup("".join(parts))


class _Labels:
    """Stored files are named by hash on disk; the page names them as the user uploaded them."""

    def __init__(self, studio: Studio, record: FileRecord):
        self._names = {
            str(content_path(studio.files_dir, f.sha256)): f.filename for f in studio.store.files()
        }
        self._names[str(content_path(studio.files_dir, record.sha256))] = record.filename

    def location(self, source: str) -> str:
        path, sep, line = source.rpartition(":")
        if sep and path in self._names:
            return f"{self._names[path]}:{line}"
        return self._names.get(source, source)

    def row(self, row: dict) -> dict:
        return {**row, "location": self.location(row.get("location", ""))}

    def cluster(self, row: dict) -> dict:
        return {
            "kept": self.location(row.get("kept", "")),
            "duplicates": [
                {**d, "source": self.location(d.get("source", ""))}
                for d in row.get("duplicates", [])
            ],
        }

    def summary(self, summary: dict) -> dict:
        summary = json.loads(json.dumps(summary))  # a copy to relabel
        for source in summary.get("sources", []):
            source["path"] = self.location(source["path"])
        for leak in summary.get("leakage", {}).get("examples", []):
            leak["source"] = self.location(leak["source"])
            leak["train_source"] = self.location(leak["train_source"])
        return summary


def _histogram(tokens: dict | None) -> list[dict]:
    if not tokens or "histogram" not in tokens:
        return []
    edges, counts = tokens["histogram"]["bin_edges"], tokens["histogram"]["counts"]
    # drop the empty bins below the shortest example, so the bars fill the chart
    first = next((k for k, c in enumerate(counts) if c), 0)
    last = max((k for k, c in enumerate(counts) if c), default=len(counts) - 1)
    top = max(counts) or 1
    return [
        {
            "low": edges[k],
            "high": edges[k + 1],
            "count": counts[k],
            "percent": round(100 * counts[k] / top, 1),
        }
        for k in range(first, last + 1)
    ]


def _read_jsonl(path: Path, limit: int) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(rows) >= limit:
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def pii_counts(examples: list) -> tuple[dict[str, int], int]:
    """PII in the examples' texts by type, found by the data stage's detector (every built-in
    type): what `data.pii_redact` would replace if it were on."""
    detector = PiiRedactor()
    found: Counter[str] = Counter()
    for example in examples:
        texts = [m.content for m in example.messages] or [example.text or ""]
        for text in texts:
            found.update(match.kind for match in detector.find(text))
    return dict(found.most_common()), len(examples)
