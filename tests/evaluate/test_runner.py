"""`evaluate` on the tiny model: every variant scored on the same examples, compared with tuned,
per-example outcomes written, the forgetting check run, and another run's adapter compared too."""

import csv
import json
from pathlib import Path

import pytest
import torch

from tunewright.config import RunConfig, save_config
from tunewright.dataset.example import Example, Message
from tunewright.dataset.prepared import PreparedDataset
from tunewright.errors import ConfigError, RunFolderError
from tunewright.evaluate.general import general_set
from tunewright.evaluate.runner import evaluate, plan_baselines
from tunewright.models import load_model

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _examples(name: str) -> list[Example]:
    with (FIXTURES / name).open() as f:
        rows = list(csv.DictReader(f))
    return [
        Example(
            messages=(Message("user", r["text"]), Message("assistant", r["category"])),
            label=r["category"],
            source=f"{name}:{i + 2}",
        )
        for i, r in enumerate(rows)
    ]


def _adapter(model_dir: Path, folder: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter, so the 'tuned' model answers differently from the base."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_model(str(model_dir)).model
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    peft_model.save_pretrained(folder)
    return folder


def _config(model_dir: Path, output_dir: Path, name: str, **evaluate) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": name,
            "output_dir": str(output_dir),
            "model": {"name": str(model_dir)},
            "data": {
                "train_files": ["unused.csv"],
                "system_prompt": "Name the intent.",
                "max_seq_len": 64,
            },
            "train": {"precision": "fp32"},
            "evaluate": {"max_new_tokens": 6, "batch_size": 8, "base_shots": 3, **evaluate},
        }
    )


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    other = _config(tiny_model_dir, root, "other")
    other.data.system_prompt = "Say the intent."
    other.run_dir.mkdir(parents=True)
    save_config(other, other.run_dir / "config.yaml")
    _adapter(tiny_model_dir, other.run_dir / "adapter", seed=1)
    cfg = _config(tiny_model_dir, root, "main", compare_runs=[str(other.run_dir)])
    trained = _adapter(tiny_model_dir, cfg.run_dir / "adapter", seed=0)
    train, test = _examples("intents_train.csv"), _examples("intents_test.csv")
    labels = sorted({e.label for e in train})
    dataset = PreparedDataset(folder=root, train=train, val=[], test=test, labels=labels)
    return cfg, evaluate(cfg, dataset, trained), test


def test_every_variant_is_scored_and_compared_with_tuned(evaluated):
    cfg, result, test = evaluated
    # the default evaluate.models: the language models first, then the classic classifiers
    assert list(result.models) == [
        "base_0shot",
        "base_kshot",
        "tuned",
        "other",
        "tfidf_logreg",
        "embed_logreg",
    ]
    assert result.models["base_kshot"].description == "base model, 3-shot with the labels listed"
    assert set(result.comparisons) == {
        "base_0shot",
        "base_kshot",
        "other",
        "tfidf_logreg",
        "embed_logreg",
    }
    assert result.strongest_base == max(
        ["base_0shot", "base_kshot"], key=lambda n: result.models[n].metrics["accuracy"]["value"]
    )
    assert result.comparison is result.comparisons[result.strongest_base]
    for name, c in result.comparisons.items():
        tuned, other = result.models["tuned"].per_example, result.models[name].per_example
        assert c["delta"] == pytest.approx(sum(tuned) / len(tuned) - sum(other) / len(other))
        assert 0 <= c["p_value"] <= 1 and c["p_value"] == c["mcnemar_p_value"]
        f1 = (
            result.models["tuned"].metrics["macro_f1"]["value"]
            - result.models[name].metrics["macro_f1"]["value"]
        )
        assert c["macro_f1"]["delta"] == pytest.approx(f1) and 0 <= c["macro_f1"]["p_value"] <= 1
    for scores in result.models.values():
        cell = scores.metrics["accuracy"]
        assert cell["low"] <= cell["value"] <= cell["high"] and len(scores.answers) == len(test)
    saved = json.loads((cfg.run_dir / "eval" / "results.json").read_text())
    assert saved["strongest_base"] == result.strongest_base and set(saved["comparisons"]) == set(
        result.comparisons
    )
    assert saved["general"]["n"] == len(general_set()) and "rows" not in saved["general"]


def test_examples_say_who_was_right_and_the_outcome(evaluated):
    cfg, result, test = evaluated
    rows = [
        json.loads(line)
        for line in (cfg.run_dir / "eval" / "examples.jsonl").read_text().splitlines()
    ]
    assert len(rows) == len(test)
    for row in rows:
        for name in result.models:
            assert row[name]["right"] == (row[name]["prediction"] == row["reference"])
        tuned, base = row["tuned"]["right"], row[result.strongest_base]["right"]
        expected = {
            (True, False): "tuned_won",
            (False, True): "tuned_lost",
            (True, True): "both_right",
            (False, False): "both_wrong",
        }[(tuned, base)]
        assert row["outcome"] == expected and row["outcome_vs"] == result.strongest_base


def test_forgetting_check_runs_on_base_and_tuned(evaluated):
    cfg, result, _ = evaluated
    rows = [
        json.loads(line)
        for line in (cfg.run_dir / "eval" / "general.jsonl").read_text().splitlines()
    ]
    assert len(rows) == len(general_set()) and {"base", "tuned"} <= set(rows[0])
    assert result.general["sentence"].startswith(("No significant loss", "General answers got"))


def test_base_alone_without_general_check_and_tuned_needs_a_model(tiny_model_dir, tmp_path):
    test = _examples("intents_test.csv")[:3]
    dataset = PreparedDataset(
        folder=tmp_path,
        train=_examples("intents_train.csv"),
        val=[],
        test=test,
        labels=sorted({e.label for e in test} | {"card_arrival", "exchange_rate"}),
    )
    cfg = _config(
        tiny_model_dir,
        tmp_path,
        "off",
        general_check=False,
        models=["base_0shot"],
        label_decoding="constrained",
    )
    result = evaluate(cfg, dataset, None)
    assert result.general is None and result.comparisons == {} and result.outcomes is None
    assert all(p in dataset.labels for p in result.models["base_0shot"].predictions), (
        "constrained to labels"
    )
    assert not (cfg.run_dir / "eval" / "general.jsonl").exists()
    with pytest.raises(RunFolderError, match="no trained model"):
        evaluate(_config(tiny_model_dir, tmp_path, "t", models=["tuned"]), dataset, None)


def test_reports_from_a_real_evaluation(evaluated):
    from tunewright.evaluate.report import verdict, write_reports

    cfg, result, _ = evaluated
    md, html = write_reports(result, cfg.run_dir)
    text = html.read_text()
    assert verdict(result) in md.read_text()
    for name in result.models:
        assert f"<td>{name}</td>" in text
    assert "<h2>Forgetting check</h2>" in text and "<h2>Confusion matrix</h2>" in text
    assert "<h2>Training</h2>" not in text, (
        "no metrics.jsonl and no training summary: no training section"
    )


def test_classic_classifiers_are_scored_and_written_like_models(evaluated):
    cfg, result, test = evaluated
    saved = json.loads((cfg.run_dir / "eval" / "results.json").read_text())
    rows = [
        json.loads(line)
        for line in (cfg.run_dir / "eval" / "examples.jsonl").read_text().splitlines()
    ]
    labels = {e.label for e in test} | {e.label for e in _examples("intents_train.csv")}
    for name in ("tfidf_logreg", "embed_logreg"):
        scores = result.models[name]
        assert scores.is_classifier and scores.cpu_seconds > 0 and scores.seconds > 0
        assert len(scores.predictions) == len(test) and set(scores.predictions) <= labels
        entry = saved["models"][name]
        assert entry["cpu_seconds"] == scores.cpu_seconds
        assert set(entry["metrics"]) == set(saved["models"]["tuned"]["metrics"]), "same metrics"
        for metric in ("accuracy", "macro_f1"):
            cell = entry["metrics"][metric]
            assert cell["low"] <= cell["value"] <= cell["high"]
        comparison = saved["comparisons"][name]
        assert 0 <= comparison["mcnemar_p_value"] <= 1 and "macro_f1" in comparison
        for row, prediction in zip(rows, scores.predictions):
            assert row[name]["prediction"] == prediction
            assert row[name]["right"] == (prediction == row["reference"])
    assert "cpu_seconds" not in saved["models"]["tuned"]
    # the verdict is still about the stronger *base* variant, never a classifier
    assert result.strongest_base in ("base_0shot", "base_kshot")
    # the words of the intents fixture decide its labels: TF-IDF learns them from 44 rows
    assert result.models["tfidf_logreg"].metrics["accuracy"]["value"] >= 0.75


def test_embed_logreg_alone_loads_the_base_model_for_its_embeddings(tiny_model_dir, tmp_path):
    train, test = _examples("intents_train.csv"), _examples("intents_test.csv")
    dataset = PreparedDataset(
        folder=tmp_path, train=train, val=[], test=test, labels=sorted({e.label for e in train})
    )
    cfg = _config(
        tiny_model_dir, tmp_path, "embed", models=["embed_logreg"], embed_max_train_examples=20
    )
    result = evaluate(cfg, dataset, None)
    assert list(result.models) == ["embed_logreg"] and result.general is None
    assert result.models["embed_logreg"].description.endswith("20 train examples")
    assert result.comparisons == {}, "no tuned model to compare with"


def test_classifiers_on_a_generation_task(tiny_model_dir, tmp_path):
    from rich.console import Console

    test = _examples("intents_test.csv")[:3]
    dataset = PreparedDataset(folder=tmp_path, train=test, val=[], test=test, labels=None)
    # the default list skips them, saying so
    console = Console(record=True, width=200)
    cfg = _config(tiny_model_dir, tmp_path, "gen")
    assert plan_baselines(cfg, dataset, "generation", console) == []
    assert "tfidf_logreg, embed_logreg skipped" in console.export_text()
    # asked for by name: an error naming the key, before any model is loaded
    asked = _config(tiny_model_dir, tmp_path, "gen2", models=["base_0shot", "tfidf_logreg"])
    with pytest.raises(ConfigError, match=r"evaluate\.models asks for tfidf_logreg.*generation"):
        evaluate(asked, dataset, None)
    assert not (asked.run_dir / "eval").exists()


def test_a_time_budget_scores_the_same_sampled_rows_for_every_model(
    evaluated, tiny_model_dir, tmp_path
):
    cfg, full, test = evaluated
    # a budget spent at once: one batch of rows (batch_size 8 of the test split), still paired
    budgeted = _config(
        tiny_model_dir,
        tmp_path,
        "budget",
        max_minutes=1e-6,
        models=["base_0shot", "tuned", "tfidf_logreg"],
        general_check=False,
    )
    _adapter(tiny_model_dir, budgeted.run_dir / "adapter", seed=0)
    train = _examples("intents_train.csv")
    dataset = PreparedDataset(
        folder=tmp_path, train=train, val=[], test=test, labels=sorted({e.label for e in train})
    )
    result = evaluate(budgeted, dataset, budgeted.run_dir / "adapter")
    assert result.n_examples == 8 < len(test) == result.test_rows
    rows = json.loads((budgeted.run_dir / "eval" / "results.json").read_text())
    assert rows["n_examples"] == 8 and rows["test_rows"] == len(test)
    lines = (budgeted.run_dir / "eval" / "examples.jsonl").read_text().splitlines()
    sources = [json.loads(line)["source"] for line in lines]
    # a seeded sample in test order, not the first rows
    assert sources == sorted(sources, key=[e.source for e in test].index)
    assert sources != [e.source for e in test[:8]]
    by_source = {e.source: i for i, e in enumerate(test)}
    for name in ("base_0shot", "tuned", "tfidf_logreg"):
        scores = result.models[name]
        assert len(scores.answers) == len(scores.per_example) == 8
        # the same answers the unbudgeted evaluation gave these rows (greedy, same adapter)
        assert [a.text for a in scores.answers] == [
            full.models[name].answers[by_source[s]].text for s in sources
        ]
    assert "8 of" in result.rows_phrase and "evaluate.max_minutes" in result.rows_phrase


def test_the_forgetting_check_runs_with_tuned_alone(tiny_model_dir, tmp_path):
    test = _examples("intents_test.csv")[:2]
    train = _examples("intents_train.csv")
    dataset = PreparedDataset(
        folder=tmp_path, train=train, val=[], test=test, labels=sorted({e.label for e in train})
    )
    cfg = _config(tiny_model_dir, tmp_path, "alone", models=["tuned"])
    result = evaluate(cfg, dataset, _adapter(tiny_model_dir, cfg.run_dir / "adapter", seed=0))
    # the base model is loaded for the general questions only: it scores no test rows
    assert list(result.models) == ["tuned"]
    assert result.general is not None and result.general["n"] == len(general_set())
