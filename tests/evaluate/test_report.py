"""The verdict, report.md and the self-contained report.html, on hand-made results (no model)."""

import base64
import json
import re

import pytest
from rich.console import Console

from tunewright.evaluate.compare import (
    outcomes,
    paired_comparison,
    paired_macro_f1,
    right_flags,
    strongest,
)
from tunewright.evaluate.general import forgetting_summary, general_set
from tunewright.evaluate.report import summary_table, verdict, write_reports
from tunewright.evaluate.runner import EvalResult, ModelScores
from tunewright.inference.generate import Generation

LABELS = [f"label_{k:02d}" for k in range(20)]
N = 60
REFS = [LABELS[i % len(LABELS)] for i in range(N)]


def _scores(name: str, right: int, cpu_seconds: float | None = None) -> ModelScores:
    """The first `right` examples answered correctly, the rest with the next label; a classic
    classifier when `cpu_seconds` is set."""
    preds = [
        r if i < right else LABELS[(LABELS.index(r) + 1) % len(LABELS)] for i, r in enumerate(REFS)
    ]
    per_example = [float(p == r) for p, r in zip(preds, REFS)]
    cell = {"value": right / N, "low": max(0, right / N - 0.1), "high": min(1, right / N + 0.1)}
    return ModelScores(
        name,
        f"{name} prompt",
        {"accuracy": cell},
        per_example,
        right_flags("classification", per_example),
        [Generation(p, len(p) // 3, True) for p in preds],
        preds,
        1.0,
        cpu_seconds,
    )


def _result(base_right: tuple[int, int], tuned_right: int, general: bool = True) -> EvalResult:
    models = {
        "base_0shot": _scores("base_0shot", base_right[0]),
        "base_kshot": _scores("base_kshot", base_right[1]),
        "tuned": _scores("tuned", tuned_right),
    }
    result = EvalResult(
        "classification",
        "accuracy",
        N,
        models,
        labels=LABELS,
        references=REFS,
        prompts=[f"question <{i}>" for i in range(N)],
    )
    tuned = models["tuned"]
    for name in ("base_0shot", "base_kshot"):
        result.comparisons[name] = paired_comparison(
            "classification",
            "accuracy",
            models[name].per_example,
            tuned.per_example,
            models[name].right,
            tuned.right,
        )
    result.strongest_base = strongest(
        {n: models[n].metrics["accuracy"]["value"] for n in ("base_0shot", "base_kshot")}
    )
    result.outcomes = outcomes(tuned.right, models[result.strongest_base].right)
    if general:
        answers = [item.answers[0] for item in general_set()]
        result.general = forgetting_summary(
            answers, answers[:10] + ["no idea"] * (len(answers) - 10)
        )
    return result


def test_verdict_is_against_the_stronger_base():
    result = _result((10, 30), 50)
    sentence = verdict(result)
    assert sentence.startswith(
        "The tuned model is better than the stronger base variant (base_kshot"
    )
    assert "0.833 vs 0.500" in sentence and "p = " in sentence
    close = _result((10, 49), 50)
    assert verdict(close).startswith(
        "No significant difference between the tuned model and the stronger base "
        "variant (base_kshot"
    )


def test_verdict_without_a_base_says_so():
    result = _result((10, 30), 50)
    result.comparisons, result.strongest_base = {}, None
    assert "no comparison" in verdict(result)


@pytest.fixture
def reports(tmp_path):
    result = _result((10, 30), 50)
    metrics = [{"step": s, "time": 0.0, "train_loss": 3.0 / s, "lr": 1e-3} for s in range(1, 11)]
    metrics += [{"step": 10, "time": 0.0, "val_loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
    md, html = write_reports(result, tmp_path, training={"steps": 10, "val_loss": 0.5})
    return result, tmp_path, md.read_text(), html.read_text()


def test_markdown_lists_every_variant_and_the_forgetting_check(reports):
    _, _, md, _ = reports
    for name in ("base_0shot", "base_kshot", "tuned"):
        assert f"| {name} |" in md
    assert "## Forgetting check" in md and "General answers got worse by" in md
    assert "tuned better on 20, base_kshot better on 0" in md


def test_html_is_self_contained_with_every_section(reports):
    result, _, _, html = reports
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html), "no external resources"
    assert "<script" not in html
    for heading in (
        "Metrics",
        "Forgetting check",
        "Training",
        "Confusion matrix (the 15 most frequent of 20 labels)",
        "Answer lengths",
        "Where they differ: tuned better on 20, base_kshot better on 0",
    ):
        assert f"<h2>{heading}</h2>" in html, heading
    assert "Metric vs training examples" not in html, "no scaling section without scaling.json"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3  # loss curves, confusion matrix, answer lengths
    assert all(base64.b64decode(png).startswith(b"\x89PNG") for png in images)
    assert "question &lt;31&gt;" in html, "prompts are escaped"
    assert verdict(result).split(":")[0] in html


def test_scaling_plot_appears_when_scaling_json_exists(tmp_path):
    (tmp_path / "scaling").mkdir()
    points = [
        {
            "fraction": f,
            "examples": int(2000 * f),
            "value": 0.5 + f / 3,
            "low": 0.4 + f / 3,
            "high": 0.6 + f / 3,
        }
        for f in (0.1, 0.25, 0.5, 1.0)
    ]
    (tmp_path / "scaling" / "scaling.json").write_text(
        json.dumps({"metric": "accuracy", "points": points})
    )
    _, html = write_reports(_result((10, 30), 50, general=False), tmp_path)
    text = html.read_text()
    assert "<h2>Metric vs training examples</h2>" in text
    assert "Forgetting check" not in text and "<h2>Training</h2>" not in text
    assert len(re.findall(r"data:image/png;base64,", text)) == 3  # scaling, confusion, lengths


CLASSIFICATION_METRICS = {
    "stop_rate": 0.99,
    "accuracy": 0.864,
    "accuracy_strict": 0.851,
    "macro_f1": 0.858,
    "invalid_rate": 0.004,
}
GENERATION_METRICS = {
    "stop_rate": 0.97,
    "rouge_l": 0.224,
    "token_f1": 0.301,
    "exact_match": 0.0,
    "judge_score": 3.4,
    "judge_unparsed_rate": 0.01,
}


def _realistic(task: str, variants: list[str]) -> EvalResult:
    """Every metric a real evaluation computes, with intervals, and the paired tests."""
    metrics = CLASSIFICATION_METRICS if task == "classification" else GENERATION_METRICS
    models = {
        name: ModelScores(
            name,
            f"{name} prompt",
            {m: {"value": v, "low": v - 0.02, "high": v + 0.02} for m, v in metrics.items()},
            [],
            [],
            [],
            None,
            333.4,
            2.5 if name.endswith("_logreg") else None,
        )
        for name in variants
    }
    headline = "accuracy" if task == "classification" else "rouge_l"
    result = EvalResult(task, headline, 500, models, strongest_base="base_kshot")
    for name in variants:
        if name != "tuned":
            c = {"delta": 0.698, "low": 0.652, "high": 0.741, "p_value": 1.4e-76}
            if task == "classification":
                c["macro_f1"] = {"delta": 0.70, "low": 0.64, "high": 0.75, "p_value": 0.001}
            result.comparisons[name] = c
    return result


@pytest.mark.parametrize(
    "task, variants",
    [
        ("classification", ["base_0shot", "base_kshot", "tuned"]),
        ("generation", ["base_0shot", "base_kshot", "tuned"]),
        ("classification", ["base_0shot", "base_kshot", "tuned", "customer-support-rank32"]),
        ("classification", ["base_0shot", "base_kshot", "tuned", "tfidf_logreg", "embed_logreg"]),
    ],
)
def test_summary_table_is_readable_in_80_columns(task, variants):
    console = Console(width=80, record=True)
    console.print(summary_table(_realistic(task, variants)))
    text = console.export_text()
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
    metrics = CLASSIFICATION_METRICS if task == "classification" else GENERATION_METRICS
    rows = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    for metric in metrics:
        assert metric in rows, f"{metric} not a whole row label:\n{text}"
    if len(variants) == 3:  # the usual three fit whole, each value above its interval
        for name in variants:
            assert name in text.splitlines()[2], text
        headline = "86.4%\n[84.4%, 88.4%]" if task == "classification" else "0.224\n[0.204, 0.244]"
        value, interval = headline.split("\n")
        assert any(
            value in a and interval in b for a, b in zip(text.splitlines(), text.splitlines()[1:])
        )
        assert "+0.698" in text and "[+0.652, +0.741]" in text and "p = 1.4e-76" in text


def _with_classifiers(tuned_right: int, tfidf_right: int, embed_right: int) -> EvalResult:
    """A result with the two classic classifiers compared with tuned, as the runner does."""
    result = _result((10, 30), tuned_right, general=False)
    tuned = result.models["tuned"]
    for name, right in (("tfidf_logreg", tfidf_right), ("embed_logreg", embed_right)):
        scores = _scores(name, right, cpu_seconds=1.25)
        result.models[name] = scores
        result.comparisons[name] = paired_comparison(
            "classification",
            "accuracy",
            scores.per_example,
            tuned.per_example,
            scores.right,
            tuned.right,
        ) | {"macro_f1": paired_macro_f1(scores.predictions, tuned.predictions, REFS, LABELS)}
    return result


def test_verdict_says_plainly_when_a_classic_classifier_matches_tuned():
    sentence = verdict(_with_classifiers(tuned_right=50, tfidf_right=49, embed_right=20))
    assert sentence.startswith("The tuned model is better than the stronger base variant")
    assert (
        "A TF-IDF + logistic regression classifier (1.2 CPU s to fit and predict) scores 81.7% "
        "vs tuned 83.3% (p = 1, not significantly different from the tuned model): "
        "the fine-tuned LLM is not needed for accuracy here."
    ) in sentence
    assert "embeddings" not in sentence, "the best matching classifier is named, not every one"


def test_verdict_says_when_a_classic_classifier_beats_tuned():
    sentence = verdict(_with_classifiers(tuned_right=35, tfidf_right=20, embed_right=58))
    assert "A logistic regression on the base model's frozen embeddings (1.2 CPU s" in sentence
    assert "scores 96.7% vs tuned 58.3%" in sentence and "better than the tuned model" in sentence
    assert "not needed for accuracy here" in sentence


def test_verdict_when_tuned_clearly_beats_the_classifiers():
    sentence = verdict(_with_classifiers(tuned_right=55, tfidf_right=30, embed_right=10))
    assert "not needed" not in sentence
    assert "The tuned model (91.7%) beats the classic classifiers on accuracy: TF-IDF" in sentence
    assert "frozen embeddings 16.7% (p = " in sentence


def test_verdict_adds_a_higher_tuned_macro_f1_to_a_match():
    result = _with_classifiers(tuned_right=50, tfidf_right=49, embed_right=20)
    result.comparisons["tfidf_logreg"]["macro_f1"] = {
        "delta": 0.12,
        "low": 0.05,
        "high": 0.2,
        "p_value": 0.003,
    }
    assert verdict(result).endswith(
        "not needed for accuracy here, though the tuned model's macro-F1 is higher by 0.120 "
        "(p = 0.003)."
    )


def test_reports_show_the_classifiers_with_their_cpu_time(tmp_path, monkeypatch):
    from tunewright.evaluate import plots

    plotted = {}
    real = plots.length_histograms

    def spy(lengths):
        plotted.update(lengths)
        return real(lengths)

    monkeypatch.setattr(plots, "length_histograms", spy)
    result = _with_classifiers(tuned_right=50, tfidf_right=49, embed_right=20)
    md, html = (p.read_text() for p in write_reports(result, tmp_path))
    assert "| tfidf_logreg | 81.7% [" in md and "| 1.0 s (1.2 CPU s) |" in md
    assert "| time |" in md.splitlines()[4]
    assert "<td>embed_logreg</td>" in html and "1.0 s (1.2 CPU s)" in html
    assert "not needed for accuracy here" in md and "not needed for accuracy here" in html
    assert set(plotted) == {"base_0shot", "base_kshot", "tuned"}, "classifiers generate nothing"
    console = Console(width=80, record=True)
    console.print(summary_table(result))
    assert "1.2 CPU s" in console.export_text()


def test_a_metric_only_some_variants_have_shows_a_dash(tmp_path):
    result = _with_classifiers(tuned_right=50, tfidf_right=49, embed_right=20)
    for name in ("base_0shot", "base_kshot", "tuned"):  # an LLM judge grades generated text only
        result.models[name].metrics["judge_score"] = {"value": 3.0, "low": 2.5, "high": 3.5}
    md = write_reports(result, tmp_path)[0].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| tfidf_logreg |"))
    assert "| - |" in row and "judge_score" in md.splitlines()[4]
