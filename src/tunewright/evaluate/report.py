"""The run report: a verdict (tuned vs the stronger base, then whether a classic classifier does as
well, then, on preference pairs, whether tuned prefers the chosen answers more often), every
variant's metrics with intervals, the paired tests, the forgetting check and the examples that
changed; as Markdown, HTML and on the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tunewright.evaluate.preference import RATE_METRICS
from tunewright.evaluate.runner import EvalResult

_PERCENT_METRICS = {
    "accuracy",
    "accuracy_strict",
    "invalid_rate",
    "stop_rate",
    "exact_match",
    *RATE_METRICS,
}
# Differing examples shown per direction; examples.jsonl holds them all.
SHOWN_EXAMPLES = 10


def fmt_cell(metric: str, cell: dict[str, float]) -> str:
    """A metric value with its 95% interval, as a percentage for rates."""
    if metric in _PERCENT_METRICS:
        return f"{cell['value']:.1%} [{cell['low']:.1%}, {cell['high']:.1%}]"
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def verdict(result: EvalResult) -> str:
    """Is the tuned model better than the stronger base variant, by how much, how sure; and, where
    classic classifiers were scored, whether one of them does as well (baseline_verdict); and, on
    preference pairs, whether it ranks the chosen answers first more often (preference_verdict)."""
    parts = (_base_verdict(result), baseline_verdict(result), preference_verdict(result))
    return " ".join(s for s in parts if s)


def _pct(cell: dict[str, float]) -> str:
    return f"{cell['value']:.1%} [{cell['low']:.1%}, {cell['high']:.1%}]"


def preference_verdict(result: EvalResult) -> str:
    """On held-out preference pairs: does the tuned model rank the chosen answer above the rejected
    one more often than the stronger pair-ranking base variant, with both intervals, the paired
    difference and McNemar's p; then the win rate of its answers. '' without pairs to compare."""
    name = result.preference_base
    if not result.pair_rows or name is None:
        return ""
    n = len(result.pair_rows)
    tuned, base = result.models["tuned"].metrics, result.models[name].metrics
    c = result.comparisons[name]["preference"]["reward_accuracy"]
    numbers = (
        f"{_pct(tuned['reward_accuracy'])} vs {_pct(base['reward_accuracy'])} of {n} held-out "
        f"preference pairs (mean log-prob per token; {c['delta'] * 100:+.1f} pts, 95% CI "
        f"[{c['low'] * 100:+.1f}, {c['high'] * 100:+.1f}], McNemar p = {c['p_value']:.2g})"
    )
    if c["p_value"] >= 0.05 or c["delta"] == 0:
        sentence = (
            f"No significant difference in how often the tuned model and {name} rank the chosen "
            f"answer above the rejected one: {numbers}."
        )
    else:
        often = "more" if c["delta"] > 0 else "less"
        sentence = (
            f"The tuned model ranks the chosen answer above the rejected one {often} often "
            f"than {name}: {numbers}."
        )
    win = result.comparisons[name]["preference"]["win_rate"]
    return sentence + (
        f" Its answers are closer (ROUGE-L) to the chosen than to the rejected answer in "
        f"{_pct(tuned['win_rate'])} of pairs vs {_pct(base['win_rate'])} "
        f"(paired bootstrap p = {win['p_value']:.2g})."
    )


def preference_rows(result: EvalResult) -> list[list[str]]:
    """Per model compared with tuned on the pairs: tuned minus it in reward accuracy and win rate,
    and DPO's reward accuracy with it as the reference model (empty without pairs)."""
    rows = []
    for name, c in result.comparisons.items():
        pref = c.get("preference")
        if not pref:
            continue
        ranked = "reward_accuracy" in pref
        rows.append(
            [
                name,
                _points(pref["reward_accuracy"]) if ranked else "-",
                _points(pref["win_rate"]),
                _pct(pref["implicit_reward_accuracy"]) if ranked else "-",
            ]
        )
    return rows


PREFERENCE_HEADER = [
    "tuned vs",
    "reward accuracy: tuned minus it (95% CI), p",
    "win rate: tuned minus it (95% CI), p",
    "implicit reward accuracy (it as reference)",
]
PREFERENCE_NOTE = (
    "reward_accuracy: share of pairs whose chosen answer has the higher mean log-prob per token "
    "(reward_accuracy_sum: higher summed log-prob, which favours the shorter answer); margins in "
    "nats; win_rate: share of pairs where the generated answer is closer (ROUGE-L) to the chosen "
    "than to the rejected answer, ties half. Implicit reward accuracy: share of pairs where tuned's "
    "summed margin exceeds the other model's, DPO's reward accuracy with that model as reference."
)


def _points(c: dict) -> str:
    return (
        f"{c['delta'] * 100:+.1f} pts [{c['low'] * 100:+.1f}, {c['high'] * 100:+.1f}], "
        f"p = {c['p_value']:.2g}"
    )


# How the verdict names each classic classifier (evaluate/baselines.py).
CLASSIFIER_NAMES = {
    "tfidf_logreg": "TF-IDF + logistic regression classifier",
    "embed_logreg": "logistic regression on the base model's frozen embeddings",
}


def baseline_verdict(result: EvalResult) -> str:
    """One sentence on the classic classifiers against the tuned model ('' when none was scored).

    A classifier 'matches' when McNemar's test finds no significant difference from the tuned
    model, or finds it better: then the fine-tuned LLM is not needed for accuracy, and the
    sentence says so, naming the best such classifier and its CPU cost. When the tuned model is
    significantly better than every classifier, the sentence says that instead."""
    if "tuned" not in result.models:
        return ""
    tuned = result.models["tuned"].metrics[result.headline]["value"]
    scored = [
        (n, m, result.comparisons[n])
        for n, m in result.models.items()
        if m.is_classifier and n in result.comparisons
    ]
    if not scored:
        return ""
    matching = [s for s in scored if s[2]["p_value"] >= 0.05 or s[2]["delta"] <= 0]
    if not matching:
        parts = [
            f"{CLASSIFIER_NAMES.get(n, n)} {_headline(result, m)} (p = {c['p_value']:.2g})"
            for n, m, c in scored
        ]
        return (
            f"The tuned model ({_fmt_headline(result, tuned)}) beats the classic classifiers on "
            f"{result.headline}: {'; '.join(parts)}."
        )
    name, best, c = max(matching, key=lambda s: s[1].metrics[result.headline]["value"])
    relation = (
        "better than"
        if c["delta"] < 0 and c["p_value"] < 0.05
        else "not significantly different from"
    )
    sentence = (
        f"A {CLASSIFIER_NAMES.get(name, name)} ({best.cpu_seconds:.1f} CPU s to fit and predict) "
        f"scores {_headline(result, best)} vs tuned {_fmt_headline(result, tuned)} "
        f"(p = {c['p_value']:.2g}, {relation} the tuned model): "
        f"the fine-tuned LLM is not needed for {result.headline} here"
    )
    f1 = c.get("macro_f1")
    if f1 and f1["p_value"] < 0.05 and f1["delta"] > 0:  # honest both ways: rare labels may differ
        sentence += (
            f", though the tuned model's macro-F1 is higher by {f1['delta']:.3f} "
            f"(p = {f1['p_value']:.2g})"
        )
    return sentence + "."


def _fmt_headline(result: EvalResult, value: float) -> str:
    return f"{value:.1%}" if result.headline in _PERCENT_METRICS else f"{value:.3f}"


def _headline(result: EvalResult, scores) -> str:
    return _fmt_headline(result, scores.metrics[result.headline]["value"])


def _base_verdict(result: EvalResult) -> str:
    c = result.comparison
    if "tuned" not in result.models or not c:
        return "The tuned model and a base variant were not both evaluated: no comparison."
    name = result.strongest_base
    base = result.models[name].metrics[result.headline]["value"]
    tuned = result.models["tuned"].metrics[result.headline]["value"]
    stronger = f"the stronger base variant ({name}: {result.models[name].description})"
    if c["p_value"] >= 0.05 or c["delta"] == 0:
        return (
            f"No significant difference between the tuned model and {stronger} on {result.headline} over "
            f"{result.rows_phrase} ({name} {base:.3f}, tuned {tuned:.3f}, p = {c['p_value']:.2g})."
        )
    direction = "better" if c["delta"] > 0 else "worse"
    return (
        f"The tuned model is {direction} than {stronger} on {result.headline}: {tuned:.3f} vs {base:.3f} "
        f"({c['delta']:+.3f}, 95% CI [{c['low']:+.3f}, {c['high']:+.3f}], p = {c['p_value']:.2g}) "
        f"over {result.rows_phrase}."
    )


def metric_names(result: EvalResult) -> list[str]:
    """The headline metric first, then the others in the order they were computed (a metric only
    some variants have, such as an LLM judge's, which classic classifiers lack, included)."""
    seen = dict.fromkeys(m for scores in result.models.values() for m in scores.metrics)
    return [result.headline] + [m for m in seen if m != result.headline]


def metric_cell(metric: str, scores) -> str:
    """`fmt_cell` of one variant's metric, or '-' where that variant does not have it."""
    cell = scores.metrics.get(metric)
    return fmt_cell(metric, cell) if cell else "-"


def time_cell(scores) -> str:
    """How long a variant took: wall seconds, and CPU seconds for a classic classifier."""
    if scores.is_classifier:
        return f"{scores.seconds:.1f} s ({scores.cpu_seconds:.1f} CPU s)"
    return f"{scores.seconds:.0f} s"


def summary_table(result: EvalResult) -> Table:
    """The metrics of every variant, for the terminal: one row per metric, one column per variant.

    Variants are few (two to six) and metrics are several, so variants go across and metrics
    down; each cell puts the value above its interval. That keeps a three-variant table within
    80 columns, where one column per metric cut every header to a few letters. The metric names
    never wrap; anything else folds rather than being cut off with an ellipsis. With five or more
    variants (the classic classifiers too) the headers break after their underscores
    (`tfidf_` above `logreg`), so a narrow column splits a name between words.
    """
    names = metric_names(result)
    table = Table(
        title=f"{result.task}: {result.rows_phrase} (95% bootstrap CI)",
        show_lines=True,
    )
    table.add_column("metric", no_wrap=True)
    crowded = len(result.models) > 4
    for variant in result.models:
        header = variant.replace("_", "_\n") if crowded else variant
        table.add_column(header, justify="right", overflow="fold")
    for metric in names:
        table.add_row(
            metric,
            *(
                _stacked_cell(metric, scores.metrics.get(metric))
                for scores in result.models.values()
            ),
            style="bold" if metric == result.headline else None,
        )
    if result.comparisons:
        table.add_row(
            f"tuned minus it\n({result.headline})",
            *(_stacked_comparison(result.comparisons.get(name)) for name in result.models),
        )
        if any("macro_f1" in c for c in result.comparisons.values()):
            table.add_row(
                "tuned minus it\n(macro_f1)",
                *(
                    _stacked_comparison(result.comparisons.get(name, {}).get("macro_f1"))
                    for name in result.models
                ),
            )
        for metric in ("reward_accuracy", "win_rate"):
            if any(metric in c.get("preference", {}) for c in result.comparisons.values()):
                table.add_row(
                    f"tuned minus it\n({metric})",
                    *(
                        _stacked_comparison(
                            result.comparisons.get(name, {}).get("preference", {}).get(metric)
                        )
                        for name in result.models
                    ),
                )
    table.add_row(
        "eval time",
        *(time_cell(s).replace(" (", "\n").rstrip(")") for s in result.models.values()),
    )
    return table


def _stacked_cell(metric: str, cell: dict[str, float] | None) -> str:
    if not cell:
        return "-"
    value, _, interval = fmt_cell(metric, cell).partition(" ")
    return f"{value}\n{interval}"


def _stacked_comparison(c: dict | None) -> str:
    if not c:
        return ""
    return f"{c['delta']:+.3f}\n[{c['low']:+.3f}, {c['high']:+.3f}]\np = {c['p_value']:.2g}"


def comparison_cell(result: EvalResult, name: str) -> str:
    """'+0.120 [+0.050, +0.190], p = 0.002' for tuned minus `name`; empty for the tuned row."""
    c = result.comparisons.get(name)
    if not c:
        return ""
    return f"{c['delta']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], p = {c['p_value']:.2g}"


def differing(result: EvalResult) -> tuple[list[int], list[int]]:
    """Indices of examples the tuned model won and lost against the strongest base."""
    found = result.outcomes or []
    return (
        [i for i, o in enumerate(found) if o == "tuned_won"],
        [i for i, o in enumerate(found) if o == "tuned_lost"],
    )


def write_markdown(result: EvalResult, path: Path, *, training: dict | None = None) -> Path:
    """A Markdown report: verdict, metrics table, paired tests, forgetting check, examples won and lost."""
    names = metric_names(result)
    lines = [
        "# Evaluation report",
        "",
        f"**{verdict(result)}**",
        "",
        "| model | " + " | ".join(names) + " | tuned minus it (95% CI), p | time |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for name, scores in result.models.items():
        cells = [metric_cell(m, scores) for m in names]
        cells += [comparison_cell(result, name), time_cell(scores)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- **{n}**: {m.description}" for n, m in result.models.items())]
    if result.pair_rows:
        lines += ["", f"## Preference pairs ({len(result.pair_rows)} held out)", ""]
        if preference_rows(result):
            lines += [
                "| " + " | ".join(PREFERENCE_HEADER) + " |",
                "|---" * len(PREFERENCE_HEADER) + "|",
                *("| " + " | ".join(row) + " |" for row in preference_rows(result)),
                "",
            ]
        lines.append(PREFERENCE_NOTE + " Per pair: `eval/examples.jsonl`.")
    if result.general:
        lines += [
            "",
            "## Forgetting check",
            "",
            result.general["sentence"] + " (`eval/general.jsonl`)",
        ]
        if result.general.get("base_answers_shipped"):
            lines.append(
                "The base model's answers are the ones shipped with tunewright for these very "
                "weights, generated in the same dtype, read rather than generated again."
            )
    if training:
        lines += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in training.items()]
    if result.outcomes is not None:
        base, tuned = result.models[result.strongest_base], result.models["tuned"]
        won, lost = differing(result)
        lines += [
            "",
            f"## Where they differ: tuned better on {len(won)}, {base.name} better on {len(lost)}",
            "",
        ]
        for title, picked in (("Tuned right, base wrong", won), ("Base right, tuned wrong", lost)):
            lines += [f"### {title}", ""]
            if not picked:
                lines += ["none", ""]
                continue
            lines += [f"| reference | {base.name} answer | tuned answer |", "|---|---|---|"]
            lines += [
                f"| {_cell(result.references[i])} | {_cell(base.answers[i].text)} | {_cell(tuned.answers[i].text)} |"
                for i in picked[:SHOWN_EXAMPLES]
            ]
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_reports(result: EvalResult, run_dir: Path, *, training: dict | None = None) -> list[Path]:
    """Write `report.md` and the self-contained `report.html` into the run folder."""
    from tunewright.evaluate.html_report import write_html

    return [
        write_markdown(result, run_dir / "report.md", training=training),
        write_html(result, run_dir / "report.html", run_dir=run_dir, training=training),
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120]
