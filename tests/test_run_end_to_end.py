"""`tunewright run` end to end on the tiny model, as a user runs it: a subprocess and a recipe file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"


def write_recipe(path: Path, model_dir: Path, **sections) -> Path:
    recipe = {
        "name": "tiny",
        "model": {"name": str(model_dir)},
        "data": {
            "train_files": [str(FIXTURES / "intents_train.csv")],
            "test_files": [str(FIXTURES / "intents_test.csv")],
            "columns": {"label": "category"},
            "system_prompt": "Name the intent.",
            "val_fraction": 0.1,
            "max_seq_len": 64,
        },
        "train": {
            "method": "lora",
            "lora_r": 8,
            "epochs": 6,
            "batch_size": 8,
            "lr": 0.02,
            "lr_warmup_steps": 2,
            "log_every_steps": 2,
        },
        "evaluate": {"max_new_tokens": 8, "batch_size": 8},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values) if isinstance(
            values, dict
        ) else recipe.__setitem__(section, values)
    path.write_text(yaml.safe_dump(recipe))
    return path


def tunewright(*args: str, cwd: Path, env_cache: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TUNEWRIGHT_CACHE": str(env_cache),
        "COLUMNS": "200",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "tunewright.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_run_writes_a_complete_run_folder(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir)
    result = tunewright(
        "run", str(recipe), "output_dir=runs", cwd=tmp_path, env_cache=tmp_path / "cache"
    )
    assert result.returncode == 0, result.stdout + result.stderr

    run = tmp_path / "runs" / "tiny"
    expected = {
        "config.yaml",
        "training.json",
        "metrics.jsonl",
        "report.md",
        "report.html",
        "eval/general.jsonl",
        "data/train.parquet",
        "data/val.parquet",
        "data/test.parquet",
        "data/quarantine.jsonl",
        "data/summary.json",
        "data/duplicates.jsonl",
        "data/manifest.json",
        "data/card.md",
        "data/length_histogram.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "eval/results.json",
        "eval/examples.jsonl",
    }
    present = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert expected <= present, expected - present
    assert not any(".tmp" in p for p in present), "temporary files left behind"

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 0.02 and resolved["output_dir"] == "runs"

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert losses[-1] < losses[0], f"training loss did not fall: {losses}"
    assert any("val_loss" in m for m in metrics)

    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["task"] == "classification" and results["n_examples"] == 16
    base = results["models"][results["strongest_base"]]["metrics"]["accuracy"]
    tuned = results["models"]["tuned"]["metrics"]["accuracy"]
    for cell in (base, tuned):
        assert cell["low"] <= cell["value"] <= cell["high"]
    assert tuned["value"] > base["value"], (base, tuned)

    examples = [
        json.loads(line) for line in (run / "eval" / "examples.jsonl").read_text().splitlines()
    ]
    assert len(examples) == 16 and {
        "base_0shot",
        "base_kshot",
        "tuned",
        "reference",
        "outcome",
    } <= set(examples[0])

    # the summary table is printed with both models' scores
    assert "base" in result.stdout and "tuned" in result.stdout and "accuracy" in result.stdout
    assert "# Evaluation report" in (run / "report.md").read_text()
    # the last line says what the run achieved and what each stage cost
    tuned_accuracy = results["models"]["tuned"]["metrics"]["accuracy"]["value"]
    output = (result.stdout + result.stderr).splitlines()
    done = [line for line in output if line.startswith("done in ")]
    assert done and f"tuned accuracy {tuned_accuracy:.1%} on " in done[-1]
    assert all(f" {stage} " in done[-1] for stage in ("prepare", "train", "evaluate"))


@pytest.mark.slow
def test_train_alone_writes_training_json_that_a_later_evaluate_reports(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        tiny_model_dir,
        train={"max_steps": 3, "report_to": []},
        evaluate={"models": ["tuned"], "general_check": False},
    )
    cache = tmp_path / "cache"
    trained = tunewright("train", str(recipe), "output_dir=runs", cwd=tmp_path, env_cache=cache)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    run = tmp_path / "runs" / "tiny"
    training = json.loads((run / "training.json").read_text())
    assert training["steps"] == training["planned_steps"] == 3
    assert training["stopped_by_time_budget"] is False and training["val_loss"] > 0
    assert set(training) == {
        "steps",
        "planned_steps",
        "stopped_by_time_budget",
        "seconds",
        "tokens_per_second",
        "final_train_loss",
        "val_loss",
        "precision",
    }
    assert not (run / "report.md").exists()

    evaluated = tunewright(
        "evaluate", str(recipe), "output_dir=runs", cwd=tmp_path, env_cache=cache
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    report = (run / "report.md").read_text()
    assert "## Training" in report and "- steps: 3" in report
    assert f"- val_loss: {training['val_loss']}" in report


def test_unknown_recipe_key_is_named(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, train={"learning_rate": 0.1})
    result = tunewright("prepare", str(recipe), cwd=tmp_path, env_cache=tmp_path / "cache")
    assert result.returncode == 1
    assert "train.learning_rate: unknown key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_override_key_is_named(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir)
    result = tunewright(
        "prepare", str(recipe), "data.max_len=5", cwd=tmp_path, env_cache=tmp_path / "cache"
    )
    assert result.returncode == 1 and "data.max_len: unknown key" in result.stderr


def test_missing_data_file_is_named(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_model_dir, data={"train_files": ["nowhere/train.csv"]}
    )
    result = tunewright("prepare", str(recipe), cwd=tmp_path, env_cache=tmp_path / "cache")
    assert result.returncode == 1
    assert "data file not found" in result.stderr and "nowhere/train.csv" in result.stderr
    assert "Traceback" not in result.stderr


def _bad_file(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.csv"
    lines = (FIXTURES / "intents_train.csv").read_text().splitlines()
    lines.insert(3, '"a row whose category is empty",')
    bad.write_text("\n".join(lines) + "\n")
    return bad


def test_row_without_needed_field_stops_strict_run(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_model_dir, data={"train_files": [str(_bad_file(tmp_path))]}
    )
    result = tunewright(
        "prepare", str(recipe), "--strict", cwd=tmp_path, env_cache=tmp_path / "cache"
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'bad.csv'}:4" in result.stderr and "field 'label': empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_row_without_needed_field_is_quarantined(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_model_dir, data={"train_files": [str(_bad_file(tmp_path))]}
    )
    result = tunewright(
        "prepare", str(recipe), "output_dir=runs", cwd=tmp_path, env_cache=tmp_path / "cache"
    )
    assert result.returncode == 0, result.stderr
    quarantine = [
        json.loads(x)
        for x in (tmp_path / "runs/tiny/data/quarantine.jsonl").read_text().splitlines()
    ]
    assert quarantine == [
        {"location": f"{tmp_path / 'bad.csv'}:4", "reason": "field 'label': empty"}
    ]
    summary = json.loads((tmp_path / "runs/tiny/data/summary.json").read_text())
    assert summary["quarantined"] == 1
    assert (
        summary["rows_read"]
        == summary["quarantined"]
        + sum(summary["splits"].values())
        + summary["not_used_after_sampling"]
    )
