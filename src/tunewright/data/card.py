"""The data card: a one-minute Markdown read of a prepared dataset, with its length histogram.

Built from the summary alone, so it always agrees with `summary.json`.
"""

from __future__ import annotations

from pathlib import Path

from tunewright.files import atomic_path

HISTOGRAM_FILE = "length_histogram.png"
_TOP_LABELS = 15


def write_card(folder: Path, summary: dict) -> None:
    """Write `card.md` (and `length_histogram.png` when token statistics exist) into `folder`."""
    tokens = summary.get("tokens")
    if tokens and any(s["examples"] for s in tokens["splits"].values()):
        _write_histogram(folder / HISTOGRAM_FILE, tokens)
    with atomic_path(folder / "card.md") as tmp:
        tmp.write_text(render_card(summary), encoding="utf-8")


def render_card(summary: dict) -> str:
    """The card's Markdown."""
    s = summary
    splits = s["splits"]
    lines = [
        "# Data card",
        "",
        f"**{splits['train']:,} train, {splits['val']:,} validation, {splits['test']:,} test examples** "
        f"from {s['rows_read']:,} rows read"
        + (
            f" ({s['chunks_added']:,} extra pieces cut from long texts)"
            if s["chunks_added"]
            else ""
        )
        + ".",
        "",
        *_pairs(s.get("preference_pairs")),
        "## Where every row went",
        "",
        "| | rows |",
        "|---|---:|",
        f"| read | {s['rows_read']:,} |",
    ]
    if s["chunks_added"]:
        lines.append(f"| + pieces of long texts | {s['chunks_added']:,} |")
    lines += [f"| → {name} | {count:,} |" for name, count in splits.items()]
    lines += [
        f"| → quarantined: {reason} | {count:,} |"
        for reason, count in s["quarantined_by_reason"].items()
    ]
    lines += [
        f"| → duplicates removed | {s['duplicates_removed']:,} |",
        f"| → not used after sampling | {s['not_used_after_sampling']:,} |",
        "",
    ]
    lines += _sources(s) + _tokens(s.get("tokens"), s.get("truncated"))
    lines += _labels(s) + _duplicates(s) + _cleaning(s)
    lines += ["", f"Manifest hash `{s.get('manifest_hash', '')[:16]}` (see manifest.json).", ""]
    return "\n".join(lines)


def _pairs(pairs: dict | None) -> list[str]:
    if not pairs:
        return []
    where = (
        "all pairs of one prompt are in the same split"
        if pairs["grouped_by_prompt"]
        else "split as data.split/data.group_by say"
    )
    return [
        f"**Preference pairs** (DPO/ORPO): {pairs['collected']:,} collected, each example a prompt "
        f"with a chosen and a rejected answer; {where}. Token counts are the longer side's "
        "length and both answers' trained tokens.",
        "",
    ]


def _sources(s: dict) -> list[str]:
    lines = ["## Sources", ""]
    for source in s["sources"]:
        note = f" — {source['note']}" if "note" in source else ""
        lines.append(
            f"- `{source['path']}`: {source['rows']:,} rows, format `{source['format']}`{note}"
        )
    if s["skipped_files"]:
        lines.append(
            f"- skipped (no reader for the file type): {', '.join(s['skipped_files'][:10])}"
        )
    return lines + [""]


def _tokens(tokens: dict | None, truncated: dict | None) -> list[str]:
    if not tokens:
        return ["## Tokens", "", "Token statistics were not computed for this run.", ""]
    lines = [
        "## Tokens",
        "",
        f"Measured with the model's tokenizer and chat template; limit {tokens['max_seq_len']} tokens.",
        "",
        "| split | examples | tokens | trained tokens | mean | median | p95 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in tokens["splits"].items():
        lines.append(
            f"| {name} | {t['examples']:,} | {t['tokens']:,} | {t['trained_tokens']:,} | "
            f"{t['mean_length']} | {t['median_length']} | {t['p95_length']} | {t['max_length']} |"
        )
    return lines + ["", *_truncated(truncated), f"![length histogram]({HISTOGRAM_FILE})", ""]


def _truncated(truncated: dict | None) -> list[str]:
    if not truncated or not truncated["examples"]:
        return []
    per_split = ", ".join(f"{n:,} {split}" for split, n in truncated["by_split"].items())
    return [
        f"**{truncated['examples']:,} examples were over the limit and had their user text "
        f"shortened to fit** ({per_split}; data.truncate: {truncated['mode']}): "
        f"{truncated['tokens_removed']:,} tokens cut in all, answers and system prompts kept whole.",
        "",
    ]


def _labels(s: dict) -> list[str]:
    counts = s.get("label_counts")
    if not counts:
        return []
    train = counts["train"]
    shown = list(train.items())[:_TOP_LABELS]
    lines = [
        f"## Labels ({len(s['labels'])})",
        "",
        "| label | train | val | test |",
        "|---|---:|---:|---:|",
    ]
    for label, n in shown:
        lines.append(
            f"| {label} | {n} | {counts['val'].get(label, 0)} | {counts['test'].get(label, 0)} |"
        )
    if len(train) > len(shown):
        lines.append(f"| … {len(train) - len(shown)} more | | | |")
    return lines + [""]


def _duplicates(s: dict) -> list[str]:
    d, leak = s["duplicates"], s["leakage"]
    if d["mode"] == "off":
        return ["## Duplicates", "", "Not checked (data.dedup: off).", ""]
    found = d["found"]
    lines = [
        "## Duplicates and leakage",
        "",
        (
            f"{found.get('exact', 0):,} exact and {found.get('near', 0):,} near duplicates "
            f"(Jaccard ≥ {d['threshold']}) in {d['clusters']:,} clusters; {s['duplicates_removed']:,} "
            f"removed (data.dedup: {d['mode']}). Clusters are listed in duplicates.jsonl."
        ),
        "",
        f"Leakage: {leak['val']} validation and {leak['test']} test examples have a duplicate in train.",
    ]
    for item in leak["examples"][:5]:
        lines.append(f"- {item['split']} `{item['source']}` ~ train `{item['train_source']}`")
    return lines + [""]


def _cleaning(s: dict) -> list[str]:
    pii = s["pii"]
    redacted = ", ".join(f"{k} {v:,}" for k, v in pii["redacted"].items()) or "none found"
    return [
        "## Cleaning and PII",
        "",
        f"Cleaning steps: {', '.join(s['cleaning']['steps']) or 'none'}; {s['cleaning']['rows_changed']:,} rows changed.",
        "",
        f"PII redaction: {', '.join(pii['types']) or 'off'}"
        + (f"; replaced: {redacted}." if pii["types"] else "."),
    ]


def _write_histogram(path: Path, tokens: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    edges, counts = tokens["histogram"]["bin_edges"], tokens["histogram"]["counts"]
    fig, ax = plt.subplots(figsize=(6, 2.8), dpi=100)
    ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#4878a8")
    ax.axvline(tokens["max_seq_len"], color="#c44", linestyle="--", label="max_seq_len")
    ax.set_xlabel("tokens per example (chat template applied)")
    ax.set_ylabel("examples")
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version stamp: same bytes
    plt.close(fig)
