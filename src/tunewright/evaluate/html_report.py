"""`report.html`: the run report as one self-contained file (inline CSS, base64 PNG plots, no JS).

It can be mailed, attached to a ticket or opened offline; report.md stays the short summary.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from tunewright.evaluate import plots
from tunewright.evaluate.report import (
    PREFERENCE_HEADER,
    PREFERENCE_NOTE,
    SHOWN_EXAMPLES,
    comparison_cell,
    differing,
    metric_cell,
    metric_names,
    preference_rows,
    time_cell,
    verdict,
)
from tunewright.evaluate.runner import EvalResult
from tunewright.files import write_text_atomic

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
.verdict { font-size: 1.2rem; padding: 0.8rem 1rem; background: #eef4fb; border-left: 4px solid #2b6cb0; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
img { max-width: 100%; } .muted { color: #666; }
"""


def _img(png: str, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{png}">'


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if k >= numeric_from else ''}>{escape(str(c))}</td>"
            for k, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _metrics_section(result: EvalResult) -> str:
    names = metric_names(result)
    rows = [
        [
            n,
            m.description,
            *(metric_cell(k, m) for k in names),
            comparison_cell(result, n),
            time_cell(m),
        ]
        for n, m in result.models.items()
    ]
    table = _table(
        ["model", "prompt", *names, "tuned minus it (95% CI), p", "time"], rows, numeric_from=2
    )
    return (
        f"<h2>Metrics</h2><p class=muted>{escape(result.rows_phrase)}; 95% bootstrap intervals; "
        f"p from {'McNemar' if result.task == 'classification' else 'a paired bootstrap'}.</p>{table}"
    )


def _preference_section(result: EvalResult) -> str:
    if not result.pair_rows:
        return ""
    rows = preference_rows(result)
    return (
        f"<h2>Preference pairs ({len(result.pair_rows)} held out)</h2>"
        + (_table(PREFERENCE_HEADER, rows) if rows else "")
        + f"<p class=muted>{escape(PREFERENCE_NOTE)} Per pair: eval/examples.jsonl.</p>"
    )


def _general_section(result: EvalResult) -> str:
    g = result.general
    if not g:
        return ""
    changed = [r for r in g["rows"] if r["base"]["right"] != r["tuned"]["right"]]
    rows = [
        [r["prompt"], " / ".join(r["answers"]), r["base"]["answer"], r["tuned"]["answer"]]
        for r in changed
    ]
    where = (
        "questions where one is right and the other wrong:"
        if rows
        else "both are right on the same questions."
    )
    table = (
        _table(["question", "reference", "base", "tuned"], rows, numeric_from=99) if rows else ""
    )
    return (
        f"<h2>Forgetting check</h2><p>{escape(g['sentence'])}</p>"
        f"<p class=muted>{g['n']} general questions, answered by base and tuned with the same prompt; "
        f"{where}</p>{table}"
    )


def _training_section(run_dir: Path, training: dict | None) -> str:
    png = plots.loss_curves(_read_jsonl(run_dir / "metrics.jsonl"))
    parts = ["<h2>Training</h2>"]
    if png:
        parts.append(_img(png, "training and validation loss"))
    if training:
        parts.append(_table(["", ""], [[k, v] for k, v in training.items()]))
    return "".join(parts) if len(parts) > 1 else ""


def _confusion_section(result: EvalResult) -> str:
    if result.task != "classification" or not result.labels:
        return ""
    shown = [n for n in (result.strongest_base, "tuned") if n in result.models] or list(
        result.models
    )[:1]
    panels = {n: (result.models[n].predictions, result.references) for n in shown}
    many = len(result.labels) > plots.CONFUSION_TOP_LABELS
    note = (
        f" (the {plots.CONFUSION_TOP_LABELS} most frequent of {len(result.labels)} labels)"
        if many
        else ""
    )
    return f"<h2>Confusion matrix{note}</h2>" + _img(
        plots.confusion(panels, result.labels), "confusion matrix"
    )


def _lengths_section(result: EvalResult) -> str:
    # classic classifiers generate nothing: they have no answer lengths
    lengths = {
        n: [a.new_tokens for a in m.answers]
        for n, m in result.models.items()
        if not m.is_classifier
    }
    return "<h2>Answer lengths</h2>" + _img(
        plots.length_histograms(lengths), "answer length distributions"
    )


def _scaling_section(run_dir: Path) -> str:
    path = run_dir / "scaling" / "scaling.json"
    if not path.is_file():
        return ""
    scaling = json.loads(path.read_text(encoding="utf-8"))
    if not scaling.get("points"):
        return ""
    return "<h2>Metric vs training examples</h2>" + _img(
        plots.scaling_curve(scaling), "metric vs training examples"
    )


def _examples_section(result: EvalResult) -> str:
    if result.outcomes is None:
        return ""
    base, tuned = result.models[result.strongest_base], result.models["tuned"]
    won, lost = differing(result)
    parts = [
        f"<h2>Where they differ: tuned better on {len(won)}, {escape(base.name)} better on {len(lost)}</h2>"
    ]
    for title, picked in (("Tuned right, base wrong", won), ("Base right, tuned wrong", lost)):
        rows = [
            [result.prompts[i], result.references[i], base.answers[i].text, tuned.answers[i].text]
            for i in picked[:SHOWN_EXAMPLES]
        ]
        parts.append(
            f"<h3>{title}</h3>"
            + (
                _table(["prompt", "reference", base.name, "tuned"], rows, 99)
                if rows
                else "<p class=muted>none</p>"
            )
        )
    return (
        "".join(parts) + "<p class=muted>All examples with their outcome: eval/examples.jsonl.</p>"
    )


def render_html(result: EvalResult, *, run_dir: Path, training: dict | None = None) -> str:
    """The whole report as one HTML string."""
    sections = [
        f"<h1>Evaluation report: {escape(run_dir.name)}</h1>",
        f"<p class=verdict>{escape(verdict(result))}</p>",
        _metrics_section(result),
        _preference_section(result),
        _general_section(result),
        _training_section(run_dir, training),
        _scaling_section(run_dir),
        _confusion_section(result),
        _lengths_section(result),
        _examples_section(result),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>tunewright: {escape(run_dir.name)}"
        f"</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_html(
    result: EvalResult, path: Path, *, run_dir: Path, training: dict | None = None
) -> Path:
    """Write `report.html` atomically (a half-written report would look like a complete one)."""
    write_text_atomic(path, render_html(result, run_dir=run_dir, training=training))
    return path
