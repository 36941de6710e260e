"""`tunewright run` with a preference section: SFT, pairs from the model's own mistakes, then
DPO continuing the SFT adapter, all in one run folder, SFT scored beside the final model."""

from __future__ import annotations

import json

from rich.console import Console
from safetensors.torch import load_file

from tests.test_run_end_to_end import write_recipe
from tunewright.config import load_config
from tunewright.data.prepare import prepare
from tunewright.evaluate.labels import LabelMatcher
from tunewright.pipeline import run
from tunewright.preference import build_pairs, preference_stage_config, sft_stage_config
from tunewright.train.loop import train

QUIET = Console(quiet=True)


def test_pairs_are_the_sft_models_wrong_answers_to_train_questions(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model_dir,
        output_dir=str(tmp_path / "runs"),
        train={"epochs": 1},
        preference={"max_questions": 40},
    )
    cfg = load_config(recipe)
    dataset = prepare(cfg, console=QUIET)
    sft_cfg = sft_stage_config(cfg)
    train(sft_cfg, dataset, console=QUIET)
    pairs, questions = build_pairs(cfg, dataset, sft_cfg.run_dir, console=QUIET)
    assert questions == min(40, len(dataset.train))
    assert pairs, "a barely trained tiny model gets some train questions wrong"
    train_sources = {e.source for e in dataset.train}
    matcher = LabelMatcher(dataset.labels)
    for pair in pairs:
        assert pair.source in train_sources  # never a test question
        assert pair.reference == pair.label  # chosen: the right intent
        assert matcher.match(pair.rejected).label != pair.label  # rejected: a wrong answer

    # the preference stage continues the SFT adapter with the recipe's preference settings
    stage = preference_stage_config(cfg, sft_cfg.run_dir)
    assert stage.train.objective == "dpo" and stage.train.lr == cfg.preference.lr
    assert stage.train.init_adapter == str(sft_cfg.run_dir / "adapter")
    assert stage.train.general_replay == 0 and not stage.train.packing


def test_run_chains_sft_and_dpo_in_one_run_folder(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model_dir,
        output_dir=str(tmp_path / "runs"),
        train={"epochs": 1},
        evaluate={"general_check": False, "models": ["base_0shot", "tuned"]},
        preference={"max_questions": 40, "lr": 0.01, "batch_size": 4},
    )
    cfg = load_config(recipe)
    result = run(cfg, console=QUIET)
    folder = cfg.run_dir
    sft, final = folder / "sft" / "adapter", folder / "adapter"
    assert (sft / "adapter_model.safetensors").is_file()
    before, after = (load_file(d / "adapter_model.safetensors") for d in (sft, final))
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before), "DPO must move the adapter"
    pairs = (folder / "data" / "preference_pairs.jsonl").read_text().splitlines()
    assert pairs and all(json.loads(p)["rejected"] for p in pairs)
    # both stages' metrics, each in its own folder of the one run folder
    assert (folder / "sft" / "metrics.jsonl").read_text().strip()
    assert (folder / "metrics.jsonl").read_text().strip()
    # SFT alone is scored beside the final model on the same rows
    assert {"base_0shot", "tuned", "sft"} <= set(result.eval.models)
    results = json.loads((folder / "eval" / "results.json").read_text())
    assert "sft" in json.dumps(results)
    assert "preference:" in (folder / "config.yaml").read_text()
