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
    tmp_path.mkdir(parents=True, exist_ok=True)
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
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values()), (
        "lora_B starts at zero and must move"
    )

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

    losses = [
        json.loads(x)["train_loss"]
        for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in x
    ]
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_is_deterministic_on_cpu(tmp_path, tiny_model_dir):
    results = []
    for i in range(2):
        cfg = config(tmp_path / str(i), tiny_model_dir, "train.max_steps=3")
        out = train(cfg, prepare(cfg, console=QUIET), console=QUIET).output_dir
        results.append(load_file(out / "adapter_model.safetensors"))
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_activation_checkpointing_gives_the_same_weights(tmp_path, tiny_model_dir, method):
    weights = []
    for flag in (False, True):
        cfg = config(
            tmp_path / str(flag),
            tiny_model_dir,
            "train.max_steps=3",
            f"train.method={method}",
            f"train.activation_checkpointing={flag}",
            "train.lr=0.003",
            # equal up to fp32 rounding; on a CPU with fast bf16, 'auto' would train in bf16
            "train.precision=fp32",
            # like with like: shared prefixes are off under activation checkpointing
            "train.shared_prefix=false",
        )
        out = train(cfg, prepare(cfg, console=QUIET), console=QUIET).output_dir
        weights.append(load_file(next(out.glob("*.safetensors"))))
    plain, recomputed = weights
    from tunewright.train.model_setup import apply_training_method, causal_lm_of

    model = apply_training_method(load_model(str(tiny_model_dir)).model, cfg.train, "fp32")
    assert causal_lm_of(model).is_activation_checkpointing  # the flag really reaches the model
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], recomputed[name], rtol=1e-5, atol=1e-6, msg=name)
    initial = load_model(str(tiny_model_dir)).model.state_dict()
    moved = [k for k in plain if k in initial and not torch.equal(plain[k], initial[k])]
    assert method == "lora" or moved, "full fine-tuning must change the weights"


@pytest.mark.parametrize("lora_layers", [1])
def test_lora_on_top_layers_only(tmp_path, tiny_model_dir, lora_layers):
    cfg = config(tmp_path, tiny_model_dir, f"train.lora_layers={lora_layers}", "train.max_steps=2")
    out = train(cfg, prepare(cfg, console=QUIET), console=QUIET).output_dir
    names = load_file(out / "adapter_model.safetensors").keys()
    assert names and all(".layers.1." in n for n in names), sorted(names)[:4]


@pytest.mark.parametrize("ratio", [None, 16.0])
def test_loraplus_gives_the_b_matrices_a_larger_learning_rate(tiny_model_dir, ratio):
    from tunewright.config import TrainConfig
    from tunewright.train.model_setup import apply_training_method, make_optimizer

    cfg = TrainConfig(lr=1e-3, loraplus_lr_ratio=ratio)
    model = apply_training_method(load_model(str(tiny_model_dir)).model, cfg, "fp32")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, trainable, cfg)
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    # Adam's first step moves each weight by lr * g/|g|; B starts at zero, so its largest entry is its lr
    largest_b = max(float(p.detach().abs().max()) for n, p in trainable.items() if "lora_B" in n)
    assert largest_b == pytest.approx(1e-3 * (ratio or 1.0), rel=1e-3)
    assert {g["lr"] for g in optimizer.param_groups if g["params"]} == (
        {1e-3, 1.6e-2} if ratio else {1e-3}
    )


def test_loraplus_run_resumes_exactly(tmp_path, tiny_model_dir):
    """The LoRA+ optimiser's four parameter groups (one empty) survive a checkpoint round trip."""
    import shutil

    cfg = config(
        tmp_path,
        tiny_model_dir,
        "train.loraplus_lr_ratio=16",
        "train.lr=0.005",
        "train.max_steps=4",
        "train.checkpoint_every_steps=1",
        "train.keep_checkpoints=4",
        "train.resume=true",
    )
    dataset = prepare(cfg, console=QUIET)
    out = train(cfg, dataset, console=QUIET).output_dir
    whole = load_file(out / "adapter_model.safetensors")
    for late in ("step-00000003", "step-00000004"):  # as if killed after step 2
        shutil.rmtree(cfg.run_dir / "checkpoints" / late)
    shutil.rmtree(out)
    resumed = load_file(train(cfg, dataset, console=QUIET).output_dir / "adapter_model.safetensors")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path, tiny_model_dir
):
    from tunewright.errors import TrainingDivergedError
    from tunewright.train.checkpoint import latest_checkpoint

    # an absurd learning rate overflows the weights after the first update
    cfg = config(
        tmp_path,
        tiny_model_dir,
        "train.method=full",
        "train.lr=1e30",
        "train.max_grad_norm=null",
        "train.lr_warmup_steps=0",
        "train.lr_schedule=constant",
        "train.checkpoint_every_steps=1",
    )
    with pytest.raises(TrainingDivergedError, match=r"step (\d+): loss=.* is not finite") as err:
        train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    failed_step = int(err.value.args[0].split(":")[0].split()[1])
    last = latest_checkpoint(cfg.run_dir / "checkpoints")
    assert last is not None and last.name == f"step-{failed_step - 1:08d}"
    saved = load_file(last / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values()), (
        "a checkpoint with non-finite weights"
    )
    assert not (cfg.run_dir / "model").exists()


def test_early_stopping_keeps_the_best_and_stops(tmp_path, tiny_model_dir):
    # lr so small that fp32 updates vanish: val loss never improves after the first validation
    cfg = config(
        tmp_path,
        tiny_model_dir,
        "train.lr=1e-12",
        "train.eval_every_steps=1",
        "train.early_stopping_patience=2",
        "train.max_steps=20",
    )
    result = train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    assert result.stopped_early and result.steps == 3
    import json

    training = json.loads((cfg.run_dir / "training.json").read_text())
    assert (training["steps"], training["planned_steps"]) == (3, 20)
    assert training["val_loss"] == round(result.val_loss, 4)


def test_packed_training_learns(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, "train.packing=true", "train.batch_size=2")
    result = train(cfg, prepare(cfg, console=QUIET), console=QUIET)
    import json

    losses = [
        json.loads(x)["train_loss"]
        for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in x
    ]
    assert losses[-1] < 0.6 * losses[0], losses
    assert result.output_dir is not None


def test_dry_run_estimates_and_writes_nothing(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    result = train(cfg, prepare(cfg, console=QUIET), console=QUIET, dry_run_steps=2)
    assert result.output_dir is None and not (cfg.run_dir / "adapter").exists()
    assert not (cfg.run_dir / "training.json").exists()
    assert result.tokens_per_second > 0 and result.peak_memory_mb > 0
    assert result.planned_steps > 3 and result.eta_seconds > 0
    # the ETA is per token: every planned step's tokens, all the run's tokens (4 epochs of the split)
    assert len(result.planned_step_tokens) == result.planned_steps
    dataset = prepare(cfg, console=QUIET)
    full = train(cfg, dataset, console=QUIET)
    assert sum(result.planned_step_tokens) == full.trained_tokens


def test_a_second_run_in_one_process_trains_in_its_own_precision(tmp_path, tiny_model_dir):
    # accelerate keeps the first Accelerator's mixed precision for the whole process
    from accelerate.state import AcceleratorState

    for precision, expected in (("bf16", "bf16"), ("fp32", "no")):
        cfg = config(
            tmp_path / precision,
            tiny_model_dir,
            "train.max_steps=1",
            f"train.precision={precision}",
        )
        train(cfg, prepare(cfg, console=QUIET), console=QUIET)
        assert AcceleratorState().mixed_precision == expected


def test_init_adapter_continues_a_trained_adapter(tmp_path, tiny_model_dir):
    first = config(tmp_path / "a", tiny_model_dir, "train.lora_r=4", "train.max_steps=3")
    trained = train(first, prepare(first, console=QUIET), console=QUIET).output_dir
    # different rank in the recipe: the adapter's own rank and targets win
    second = config(
        tmp_path / "b",
        tiny_model_dir,
        f"train.init_adapter={trained}",
        "train.max_steps=1",
        "train.lr=1e-12",  # one step that barely moves: the result is the first adapter
    )
    out = train(second, prepare(second, console=QUIET), console=QUIET).output_dir
    start, continued = (load_file(d / "adapter_model.safetensors") for d in (trained, out))
    assert start.keys() == continued.keys()
    for name, value in start.items():
        assert (
            value.shape == continued[name].shape and value.shape[0 if "lora_A" in name else 1] == 4
        )
        torch.testing.assert_close(continued[name], value, atol=1e-6, rtol=0)
