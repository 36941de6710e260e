"""The run report: a verdict in one sentence and the metrics table, as Markdown and on the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tunewright.evaluate.runner import EvalResult

_PERCENT_METRICS = {"accuracy", "accuracy_strict", "invalid_rate", "stop_rate", "exact_match"}


def _fmt(metric: str, cell: dict[str, float]) -> str:
    if metric in _PERCENT_METRICS:
        return f"{cell['value']:.1%} [{cell['low']:.1%}, {cell['high']:.1%}]"
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def verdict(result: EvalResult) -> str:
    """One sentence: is the tuned model better than the base, by how much, and how sure."""
    c = result.comparison
    if not c:
        return "Only one model was evaluated: no comparison."
    base = result.models["base"].metrics[result.headline]["value"]
    tuned = result.models["tuned"].metrics[result.headline]["value"]
    p = c.get("mcnemar_p_value", c["p_value_bootstrap"])
    significant = p < 0.05
    direction = "better" if c["delta"] > 0 else "worse"
    if not significant:
        return (f"No significant difference on {result.headline} over {result.n_examples} held-out "
                f"examples (base {base:.3f}, tuned {tuned:.3f}, p = {p:.3g}).")
    return (f"The tuned model is {direction} than the base on {result.headline}: {tuned:.3f} vs "
            f"{base:.3f} ({c['delta']:+.3f}, 95% CI [{c['low']:+.3f}, {c['high']:+.3f}], p = {p:.2g}) "
            f"over {result.n_examples} held-out examples.")


def metric_names(result: EvalResult) -> list[str]:
    first = next(iter(result.models.values()))
    ordered = [result.headline] + [m for m in first.metrics if m != result.headline]
    return ordered


def summary_table(result: EvalResult) -> Table:
    table = Table(title=f"{result.task}: {result.n_examples} held-out examples (95% bootstrap CI)")
    table.add_column("model", style="bold")
    names = metric_names(result)
    for metric in names:
        table.add_column(metric, justify="right")
    table.add_column("eval time", justify="right")
    for name, scores in result.models.items():
        table.add_row(name, *(_fmt(m, scores.metrics[m]) for m in names), f"{scores.seconds:.0f} s")
    return table


def write_markdown(result: EvalResult, path: Path, *, training: dict | None = None) -> Path:
    """A Markdown report: verdict, metrics table, training summary, examples won and lost."""
    names = metric_names(result)
    lines = ["# Evaluation report", "", f"**{verdict(result)}**", "", "| model | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for name, scores in result.models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m, scores.metrics[m]) for m in names) + " |")
    if training:
        lines += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in training.items()]
    if result.comparison and "base" in result.models and "tuned" in result.models:
        base, tuned = result.models["base"], result.models["tuned"]
        won = [i for i in range(result.n_examples) if tuned.per_example[i] > base.per_example[i]]
        lost = [i for i in range(result.n_examples) if tuned.per_example[i] < base.per_example[i]]
        lines += ["", f"## Where they differ: tuned better on {len(won)}, base better on {len(lost)}", ""]
        for title, picked in (("Tuned right, base wrong", won[:10]), ("Base right, tuned wrong", lost[:10])):
            lines += [f"### {title}", "", "| base answer | tuned answer |", "|---|---|"]
            lines += [f"| {_cell(base.answers[i].text)} | {_cell(tuned.answers[i].text)} |" for i in picked]
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:120]
