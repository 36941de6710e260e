"""`tunewright.runs`: what a run folder holds, its config, its training summary, loading its tuned
model, and the atomic save of what training produced."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunewright.config import RunConfig, save_config
from tunewright.errors import ConfigError, DataError, RunFolderError
from tunewright.runs import (
    RunFolder,
    Trained,
    load_tuned,
    open_prepared,
    read_run_config,
    read_training_summary,
    save_trained,
    write_training_summary,
)


def _lora_run(run_dir: Path, model_dir: Path, *, config: bool = True) -> Path:
    """A run folder with a random (non-zero) LoRA adapter on the tiny model."""
    from peft import LoraConfig, get_peft_model

    from tunewright.models import load_model

    torch.manual_seed(0)
    model = load_model(str(model_dir)).model
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    peft_model.save_pretrained(run_dir / "adapter")
    if config:
        cfg = RunConfig(
            name=run_dir.name,
            output_dir=str(run_dir.parent),
            model={"name": str(model_dir)},
            data={"system_prompt": "Name the intent."},
        )
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def _full_run(run_dir: Path, model_dir: Path) -> Path:
    shutil.copytree(model_dir, run_dir / "model")
    return run_dir


def test_a_lora_run_is_a_run_with_its_adapter(tmp_path, tiny_model_dir):
    run = RunFolder(_lora_run(tmp_path / "lora", tiny_model_dir))
    assert run.is_run()
    assert run.trained() == Trained("lora", run.path / "adapter")
    assert Trained.at(run.path / "adapter").method == "lora"


def test_a_full_run_is_a_run_with_its_model(tmp_path, tiny_model_dir):
    run = RunFolder(_full_run(tmp_path / "full", tiny_model_dir))
    assert run.is_run()
    assert run.trained() == Trained("full", run.path / "model")
    assert run.trained_dir("full") == run.path / "model"
    assert run.trained_dir("lora") == run.path / "adapter"


def test_folders_that_are_not_runs_are_named(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not RunFolder(empty).is_run()
    with pytest.raises(RunFolderError, match=f"{empty} is not a run folder"):
        RunFolder(empty).trained()
    # a model folder is a model, not a run
    assert not RunFolder(tiny_model_dir).is_run()
    missing = tmp_path / "nowhere"
    assert not RunFolder(missing).is_run()
    with pytest.raises(RunFolderError, match=f"run folder not found: {missing}"):
        RunFolder(missing).trained()
    with pytest.raises(RunFolderError, match=f"no trained model at {empty}"):
        Trained.at(empty)


def test_a_run_that_was_not_trained_yet(tmp_path):
    run = RunFolder(tmp_path / "untrained")
    run.path.mkdir()
    save_config(RunConfig(name="untrained", output_dir=str(tmp_path)), run.config_file)
    (run.path / "adapter").mkdir()  # left empty by a crash before the first save
    assert run.is_run()
    with pytest.raises(RunFolderError, match="holds no trained model.*tunewright train"):
        run.trained()


def test_config_is_read_from_config_yaml(tmp_path, tiny_model_dir):
    run_dir = _lora_run(tmp_path / "lora", tiny_model_dir)
    cfg = read_run_config(run_dir)
    assert cfg.name == "lora" and cfg.data.system_prompt == "Name the intent."
    assert cfg.model.name == str(tiny_model_dir)


def test_config_falls_back_to_what_the_trained_folder_says(tmp_path, tiny_model_dir):
    lora = read_run_config(_lora_run(tmp_path / "lora", tiny_model_dir, config=False))
    assert (lora.name, lora.output_dir, lora.train.method) == ("lora", str(tmp_path), "lora")
    assert lora.model.name == str(tiny_model_dir)  # from adapter_config.json
    full = read_run_config(_full_run(tmp_path / "full", tiny_model_dir))
    assert (full.name, full.train.method) == ("full", "full")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunFolderError, match="not a run folder"):
        read_run_config(empty)


def test_a_broken_config_yaml_names_the_file(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text(yaml.safe_dump({"name": "run", "train": {"learning_rate": 1}}))
    with pytest.raises(
        ConfigError, match=f"(?s){run.config_file}.*train.learning_rate: unknown key"
    ):
        read_run_config(run.path)


def test_training_summary_round_trip(tmp_path):
    assert read_training_summary(tmp_path) is None
    summary = {"steps": 12, "val_loss": None, "precision": "fp32", "seconds": 3.5}
    path = write_training_summary(tmp_path, summary)
    assert path == RunFolder(tmp_path).training_summary_file
    assert read_training_summary(tmp_path) == summary
    assert [p.name for p in tmp_path.iterdir()] == ["training.json"]  # no temporary file left
    path.write_text("{not json")
    with pytest.raises(RunFolderError, match=str(path)):
        read_training_summary(tmp_path)


def test_prepared_data_is_found_only_once_complete(tmp_path):
    run = RunFolder(tmp_path)
    run.data_dir.mkdir()
    (run.data_dir / "train.parquet").write_bytes(b"")  # prepare was interrupted
    assert not run.has_prepared_data()
    with pytest.raises(DataError, match="not a prepared dataset"):
        open_prepared(tmp_path)
    (run.data_dir / "summary.json").write_text(json.dumps({"labels": ["a", "b"]}))
    assert run.has_prepared_data()
    assert open_prepared(tmp_path).labels == ["a", "b"]


def test_load_tuned_lora_is_base_plus_unmerged_adapter(tmp_path, tiny_model_dir):
    from peft import PeftModel

    tuned = load_tuned(_lora_run(tmp_path / "lora", tiny_model_dir), dtype=torch.float32)
    assert isinstance(tuned.model, PeftModel) and tuned.method == "lora"
    assert tuned.trained_dir == tmp_path / "lora" / "adapter"
    assert tuned.cfg.data.system_prompt == "Name the intent." and not tuned.model.training
    assert all(p.dtype == torch.float32 for p in tuned.model.parameters())
    assert tuned.tokenizer.pad_token_id is not None


def test_load_tuned_full_loads_the_model_in_the_dtype_asked(tmp_path, tiny_model_dir):
    tuned = load_tuned(_full_run(tmp_path / "full", tiny_model_dir), dtype=torch.bfloat16)
    assert tuned.method == "full" and not tuned.model.training
    assert {p.dtype for p in tuned.model.parameters()} == {torch.bfloat16}
    with pytest.raises(RunFolderError, match="run folder not found"):
        load_tuned(tmp_path / "nowhere")


class _Saver:
    """Stands in for a model and its tokenizer: save_pretrained writes one marker file."""

    def __init__(self, name: str, fail: bool = False):
        self.name, self.fail = name, fail

    def save_pretrained(self, folder, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        if self.fail:
            raise OSError("disk full")
        (Path(folder) / self.name).write_text("x")


def test_save_trained_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    first = save_trained(_Saver("old-weights"), _Saver("tokenizer"), tmp_path, "lora")
    assert first == tmp_path / "adapter" and (first / "old-weights").is_file()

    seen: list[tuple[str, set[str]]] = []
    real_replace = os.replace

    def replace(src, dst):
        # what a reader would find at this moment: the old adapter somewhere, never nothing
        old = {p.name for p in tmp_path.glob("*/old-weights")}
        seen.append((Path(dst).name, old))
        real_replace(src, dst)

    monkeypatch.setattr("tunewright.files.os.replace", replace)
    save_trained(_Saver("new-weights"), _Saver("tokenizer"), tmp_path, "lora")
    assert [dst.startswith(".tmp-adapter") for dst, _ in seen] == [True, False]
    assert seen[-1][0] == "adapter"
    assert all(old for _, old in seen), "the old adapter existed until the new one was moved in"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["new-weights", "tokenizer"]


def test_a_failed_save_leaves_the_previous_model(tmp_path):
    save_trained(_Saver("old-weights"), _Saver("tokenizer"), tmp_path, "full")
    with pytest.raises(OSError, match="disk full"):
        save_trained(_Saver("new", fail=True), _Saver("tokenizer"), tmp_path, "full")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["old-weights", "tokenizer"]
