"""The training loop on the tiny model: what trains changes, what is frozen does not, loss falls."""

from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from tunewright.config import load_config
from tunewright.data.prepare import prepare
from tunewright.models import load_model
from tunewright.train.loop import train

FIXTURES = Path(__file__).parents[1] / "fixtures"
QUIET = Console(quiet=True)


def config(tmp_path, model_dir, *overrides):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\noutput_dir: {tmp_path / 'runs'}\nmodel: {{name: {model_dir}}}\n"
        f"data: {{train_files: [{FIXTURES / 'intents_train.csv'}], test_files: [{FIXTURES / 'intents_test.csv'}], "
        "columns: {label: category}, max_seq_len: 64, val_fraction: 0.1}\n"
        "train: {epochs: 4, batch_size: 8, lr: 0.02, lr_warmup_steps: 1, log_every_steps: 1}\n"
    )
    return load_config(recipe, list(overrides))


def test_lora_changes_every_adapter_weight_and_no_base_weight(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    result = train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    adapter = load_file(result.output_dir / "adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values()), "lora_B starts at zero and must move"

    from peft import PeftModel

    base = load_model(str(tiny_model_dir)).model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, result.output_dir)
    for name, value in tuned.get_base_model().state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, before[key]), f"frozen weight {key} changed"


def test_full_finetuning_changes_every_parameter_and_loss_falls(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "train.method=full", "train.lr=0.003")
    initial = load_model(str(tiny_model_dir)).model.state_dict()
    result = train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    trained = load_model(str(result.output_dir)).model.state_dict()
    unchanged = [k for k in initial if torch.equal(initial[k], trained[k]) and "rotary" not in k]
    assert unchanged == []
    import json

    losses = [json.loads(x)["train_loss"] for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in x]
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_is_deterministic_on_cpu(tmp_path, tiny_model_dir):
    results = []
    for i in range(2):
        cfg = config(tmp_path / str(i), tiny_model_dir, "train.max_steps=3")
        out = train(cfg, prepare(cfg, console=QUIET), console=QUIET).output_dir
        results.append(load_file(out / "adapter_model.safetensors"))
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize("lora_layers", [1])
def test_lora_on_top_layers_only(tmp_path, tiny_model_dir, lora_layers):
    cfg = config(tmp_path, tiny_model_dir, f"train.lora_layers={lora_layers}", "train.max_steps=2")
    out = train(cfg, prepare(cfg, console=QUIET), console=QUIET).output_dir
    names = load_file(out / "adapter_model.safetensors").keys()
    assert names and all(".layers.1." in n for n in names), sorted(names)[:4]
