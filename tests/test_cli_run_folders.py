"""Pointing a command at the wrong folder, through the real CLI: exit code 1, one message naming
the folder (or the recipe key), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.config import RunConfig, load_config, save_config

FIXTURES = Path(__file__).parent / "fixtures"


def _fails_clearly(args: list[str], *expected: str) -> str:
    result = CliRunner().invoke(app, args, env={"TUNEWRIGHT_API_KEY": "", "COLUMNS": "400"})
    output = " ".join(result.output.split())  # rich wraps long paths
    assert result.exit_code == 1, output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    assert "Traceback" not in output
    for text in expected:
        assert text in output, output
    return output


@pytest.fixture
def empty(tmp_path) -> Path:
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    return folder


@pytest.fixture
def untrained(tmp_path) -> Path:
    """A run folder with its config but nothing trained yet."""
    folder = tmp_path / "untrained"
    folder.mkdir()
    save_config(RunConfig(name="untrained", output_dir=str(tmp_path)), folder / "config.yaml")
    return folder


def test_export_of_a_folder_that_is_not_a_run(empty, untrained, tmp_path):
    _fails_clearly(["export", str(empty)], f"{empty} is not a run folder")
    _fails_clearly(["export", str(tmp_path / "nowhere")], f"run folder not found: {tmp_path}")
    _fails_clearly(["export", str(untrained)], f"{untrained} holds no trained model")


def test_serve_of_a_folder_that_is_not_a_run(empty, untrained):
    _fails_clearly(["serve", str(empty), "--port", "0"], str(empty), "no config.json")
    _fails_clearly(["serve", str(untrained), "--port", "0"], f"{untrained} holds no trained model")


def test_harness_of_a_folder_that_is_not_a_run(empty, untrained):
    pytest.importorskip("lm_eval")
    _fails_clearly(["harness", str(untrained)], f"{untrained} holds no trained model")
    _fails_clearly(["harness", str(empty), "--output", str(empty / "h.json")], str(empty))


@pytest.fixture
def recipe(tmp_path, tiny_model_dir) -> Path:
    """A recipe whose run folder holds prepared data and nothing else."""
    from tunewright.data.prepare import prepare

    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "output_dir": str(tmp_path / "runs"),
                "model": {"name": str(tiny_model_dir)},
                "data": {
                    "train_files": [str(FIXTURES / "intents_train.csv")],
                    "test_files": [str(FIXTURES / "intents_test.csv")],
                    "columns": {"label": "category"},
                    "max_seq_len": 64,
                },
                "evaluate": {"general_check": False},
            }
        )
    )
    prepare(load_config(path), console=Console(quiet=True))
    return path


def test_evaluate_before_training_or_preparing(recipe, tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    _fails_clearly(["evaluate", str(recipe)], f"no trained model in {run_dir}", "tunewright train")
    _fails_clearly(
        ["evaluate", str(recipe), "name=other"],
        f"{tmp_path / 'runs' / 'other' / 'data'} is not a prepared dataset",
    )


def test_evaluate_with_a_wrong_compare_runs_folder(recipe, empty, untrained, tmp_path):
    base_only = "evaluate.models=[base_0shot]"
    _fails_clearly(
        ["evaluate", str(recipe), base_only, f"evaluate.compare_runs=[{tmp_path / 'nowhere'}]"],
        f"evaluate.compare_runs: {tmp_path / 'nowhere'} is not a run folder",
    )
    _fails_clearly(
        ["evaluate", str(recipe), base_only, f"evaluate.compare_runs=[{empty}]"],
        f"evaluate.compare_runs: {empty} is not a run folder",
    )
    # a run with a config but no trained model used to fail with a traceback, after the base
    # models had been scored
    _fails_clearly(
        ["evaluate", str(recipe), base_only, f"evaluate.compare_runs=[{untrained}]"],
        f"evaluate.compare_runs: {untrained} holds no trained model",
    )
