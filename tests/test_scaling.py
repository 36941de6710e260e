"""Data scaling (`tunewright run --scaling`): nested subsets, one tuned model per fraction, the
same test set for all, and scaling.json / scaling.png in the shape the HTML report reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.config import load_config
from tunewright.dataset.example import Example, Message
from tunewright.dataset.prepared import PreparedDataset
from tunewright.errors import ConfigError
from tunewright.scaling import fraction_config, nested_subset

FIXTURES = Path(__file__).parent / "fixtures"


def _recipe(path: Path, model_dir: Path, **train) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "output_dir": str(path.parent / "runs"),
                "model": {"name": str(model_dir)},
                "data": {
                    "train_files": [str(FIXTURES / "intents_train.csv")],
                    "test_files": [str(FIXTURES / "intents_test.csv")],
                    "columns": {"label": "category"},
                    "system_prompt": "Name the intent.",
                    "max_seq_len": 64,
                    "val_fraction": 0.1,
                },
                "train": {"epochs": 3, "batch_size": 8, "lr": 0.02, "lr_warmup_steps": 1, **train},
                "evaluate": {"max_new_tokens": 8, "batch_size": 8, "general_check": False},
            }
        )
    )
    return path


class _InMemory(PreparedDataset):
    def __init__(self, splits: dict[str, list[Example]]) -> None:
        super().__init__(Path("."), ["a"], {})
        self._in_memory = splits

    def split(self, name: str) -> list[Example]:
        return self._in_memory[name]


def _dataset(n: int) -> PreparedDataset:
    # sorted by label, as input files often are: a plain prefix would hold one label only
    rows = [
        Example(
            (Message("user", f"q{i}"), Message("assistant", label)), label=label, source=f"f:{i}"
        )
        for i, label in enumerate(["a"] * (n // 2) + ["b"] * (n - n // 2))
    ]
    return _InMemory({"train": rows, "val": rows[:2], "test": rows[:3]})


def test_subsets_are_nested_stratified_samples_and_keep_val_and_test():
    dataset = _dataset(40)
    subsets = [nested_subset(dataset, f, seed=0).train for f in (0.25, 0.5, 1.0)]
    assert [len(s) for s in subsets] == [10, 20, 40]
    assert set(subsets[0]) <= set(subsets[1]) <= set(subsets[2]) == set(dataset.train)
    for subset in subsets[:2]:
        assert abs(sum(e.label == "a" for e in subset) - len(subset) / 2) <= 1, "not stratified"
    assert subsets[0] != dataset.train[:10]
    assert nested_subset(dataset, 0.5, seed=0).train == subsets[1]  # the seed fixes the sample
    assert nested_subset(dataset, 0.5, seed=1).train != subsets[1]
    assert len(nested_subset(dataset, 0.01, seed=0).train) == 1  # never empty
    assert (
        nested_subset(dataset, 0.5, seed=0).test is dataset.test
        and nested_subset(dataset, 0.5, seed=0).val is dataset.val
    )


def test_sub_run_config_lives_under_the_run_and_scores_only_the_tuned_model(
    tmp_path, tiny_model_dir
):
    cfg = load_config(_recipe(tmp_path / "r.yaml", tiny_model_dir, scaling_fractions=[1, 0.25]))
    assert cfg.train.scaling_fractions == [0.25, 1.0]  # sorted
    sub = fraction_config(cfg, 0.25)
    assert sub.run_dir == cfg.run_dir / "scaling" / "fraction-0.25"
    assert sub.evaluate.models == ["tuned"] and sub.train.scaling_fractions == []
    assert (
        sub.data == cfg.data and sub.train.lr == cfg.train.lr and sub.train.seed == cfg.train.seed
    )


@pytest.mark.parametrize("bad", ["[0]", "[1.5]", "[-0.5, 0.5]"])
def test_fractions_outside_zero_one_are_named(tmp_path, tiny_model_dir, bad):
    with pytest.raises(ConfigError, match=r"train\.scaling_fractions must lie in \(0, 1\]"):
        load_config(
            _recipe(tmp_path / "r.yaml", tiny_model_dir), [f"train.scaling_fractions={bad}"]
        )


def test_cli_scaling_option_sets_the_fractions(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path / "r.yaml", tiny_model_dir)
    result = CliRunner().invoke(
        app, ["run", str(recipe), "--scaling", "0.5,0.25,1", "--print-config"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["train"]["scaling_fractions"] == [0.25, 0.5, 1.0]


@pytest.mark.slow
def test_run_with_scaling_writes_the_curve(tmp_path, tiny_model_dir):
    from tunewright.pipeline import run

    cfg = load_config(_recipe(tmp_path / "r.yaml", tiny_model_dir, scaling_fractions=[0.5, 1]))
    result = run(cfg, console=Console(quiet=True))
    folder = cfg.run_dir / "scaling"

    scaling = json.loads((folder / "scaling.json").read_text())
    assert set(scaling) == {"metric", "points"} and scaling["metric"] == "accuracy"
    n_train = json.loads((cfg.run_dir / "data" / "summary.json").read_text())["splits"]["train"]
    points = scaling["points"]
    assert [p["fraction"] for p in points] == [0.5, 1.0]
    assert [p["examples"] for p in points] == [round(n_train / 2), n_train]
    for p in points:
        assert set(p) == {"fraction", "examples", "value", "low", "high"}
        assert isinstance(p["examples"], int) and all(
            isinstance(p[k], float) for k in ("fraction", "value", "low", "high")
        )
        assert 0 <= p["low"] <= p["value"] <= p["high"] <= 1
    # the full fraction is the main run itself, not trained again
    assert points[1]["value"] == result.eval.models["tuned"].metrics["accuracy"]["value"]
    assert not (folder / "fraction-1").exists()
    assert (folder / "scaling.png").read_bytes().startswith(b"\x89PNG")

    # the half-data model has its own adapter and was scored on the same test examples
    sub = folder / "fraction-0.5"
    assert (sub / "adapter" / "adapter_model.safetensors").is_file()
    sub_results = json.loads((sub / "eval" / "results.json").read_text())
    assert (
        list(sub_results["models"]) == ["tuned"]
        and sub_results["n_examples"] == result.eval.n_examples
    )
    sub_examples = [
        json.loads(line)["source"]
        for line in (sub / "eval" / "examples.jsonl").read_text().splitlines()
    ]
    main_examples = [
        json.loads(line)["source"]
        for line in (cfg.run_dir / "eval" / "examples.jsonl").read_text().splitlines()
    ]
    assert sub_examples == main_examples
    assert not list(tmp_path.rglob(".tmp-*")), "temporary files left behind"
