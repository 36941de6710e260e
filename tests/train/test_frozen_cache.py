"""The frozen-layer cache: with LoRA on the top layers only, later passes start from the cached
output of the layers below them, with the loss, gradients and weights of running every layer."""

import csv
import io
import math
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from transformers import MistralConfig, MistralForCausalLM

from tests.train.test_loop import FIXTURES, config
from tests.train.test_resume import WORKER, final_adapter, run_worker, worker_env
from tunewright.config import TrainConfig
from tunewright.data.prepare import prepare
from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.models import load_model
from tunewright.train import frozen_cache
from tunewright.train.frozen_cache import (
    FrozenBottom,
    FrozenCacheForward,
    choose_forward,
    first_micro_batches,
)
from tunewright.train.loop import fit, train
from tunewright.train.micro_batches import MicroBatches
from tunewright.train.model_setup import ChunkedLossForward, apply_training_method, causal_lm_of
from tunewright.train.setup import setup

QUIET = Console(quiet=True)
TOP = ("train.lora_layers=2", "data.system_prompt=Name the intent.")


def intent_chats() -> list[Example]:
    """Six short Banking77-like chats with intent labels."""
    return [
        Example(messages=(Message("user", text), Message("assistant", label)), label=label)
        for text, label in [
            ("I lost my card", "lost_card"),
            ("my card has not arrived yet, where is it?", "card_arrival"),
            ("how do I top up", "top_up"),
            ("the exchange rate is wrong on my payment", "exchange_rate"),
            ("card lost", "lost_card"),
            ("why was I charged a fee for my transfer this morning?", "transfer_fee"),
        ]
    ]


@pytest.fixture(scope="module")
def chats():
    return intent_chats()


@pytest.fixture
def top_lora(tiny_4_layer_model_dir):
    return lora_on_top(tiny_4_layer_model_dir, "fp32")


def lora_on_top(model_dir, precision):
    """The 4-layer model with LoRA on layers 2 and 3, lora_B moved off zero so the adapters'
    gradients are not trivial."""
    loaded = load_model(str(model_dir))
    torch.manual_seed(0)
    model = apply_training_method(loaded.model, TrainConfig(lora_layers=2), precision)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return loaded, model


def micro_batches(loaded, chats, **kwargs) -> MicroBatches:
    chat = ChatTokenizer(loaded.tokenizer, "Name the intent.", 128)
    pad = loaded.tokenizer.pad_token_id
    return MicroBatches.build(chat, chats, pad, packing=False, max_seq_len=128, **kwargs)


def loss_and_grads(forward, batch, precision="fp32"):
    forward.model.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        nll, weight = forward(**batch)
    nll.backward()
    grads = {n: p.grad.clone() for n, p in forward.model.named_parameters() if p.requires_grad}
    return nll.detach(), weight, grads


def assert_same(result, expected, rounding=1e-5):
    """Equal up to float rounding; `rounding` relative to each gradient's scale."""
    (nll, weight, grads), (full_nll, full_weight, full_grads) = result, expected
    torch.testing.assert_close(nll, full_nll, rtol=rounding, atol=rounding)
    assert weight == full_weight
    assert grads.keys() == full_grads.keys() and grads
    for name in grads:
        assert full_grads[name].abs().sum() > 0, name
        scale = float(full_grads[name].abs().max())
        torch.testing.assert_close(
            grads[name], full_grads[name], rtol=10 * rounding, atol=rounding * scale, msg=name
        )


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("label_weighting", ["none", "balanced"])
def test_loss_and_gradients_equal_running_every_layer(
    top_lora, chats, share_prefix, label_weighting
):
    loaded, model = top_lora
    data = micro_batches(loaded, chats, share_prefix=share_prefix, label_weighting=label_weighting)
    everything = list(range(len(chats)))
    pad = loaded.tokenizer.pad_token_id
    bottom = FrozenBottom(
        data.units, {u: everything for u in everything}, pad, 2, share_prefix=share_prefix
    )
    cached, full = FrozenCacheForward(model, bottom), ChunkedLossForward(model)
    # the first batch fills the cache; the others, of other compositions and widths, read it
    for indices in (everything, [4, 1], [5, 0, 2], [3]):
        batch = data.collate(indices)
        assert ("prefix_ids" in batch) == (share_prefix and len(indices) > 1)
        assert ("loss_weights" in batch) == (label_weighting != "none")
        assert_same(loss_and_grads(cached, batch), loss_and_grads(full, batch))
    assert cached.bottom.hidden.keys() == set(everything)
    # validation batches name no units: they run every layer, as without the cache
    batch = {k: v for k, v in data.collate([0, 2]).items() if k != "unit_ids"}
    assert_same(loss_and_grads(cached, batch), loss_and_grads(full, batch))


def test_under_bf16_too(tiny_4_layer_model_dir, chats):
    """bf16 weights and autocast, as 'auto' trains where bf16 is fast: the cache keeps the states
    in the dtype the forward made them, and runs the shared prefix as training without it does,
    so the top layers see what they would in full. (Prefix shared against whole rows: in bf16 the
    rounding moves gradients by ~1e-2 of their scale, so each side must do the same.)"""
    loaded, model = lora_on_top(tiny_4_layer_model_dir, "bf16")
    everything = list(range(len(chats)))
    pad = loaded.tokenizer.pad_token_id
    for share_prefix in (False, True):
        data = micro_batches(loaded, chats, share_prefix=share_prefix)
        first = {u: everything for u in everything}
        bottom = FrozenBottom(data.units, first, pad, 2, share_prefix=share_prefix)
        cached, full = FrozenCacheForward(model, bottom), ChunkedLossForward(model)
        for indices in (everything, [4, 1, 2]):
            result = loss_and_grads(cached, data.collate(indices), "bf16")
            assert_same(result, loss_and_grads(full, data.collate(indices), "bf16"))
        assert {h.dtype for h in bottom.hidden.values()} == {torch.bfloat16}


def test_a_unit_keeps_the_states_of_its_first_micro_batch(top_lora, chats):
    """A resumed run starts with an empty cache: a unit it needs is recomputed in the first
    micro-batch it was in, whose padding (on hardware where padding changes rounding) gives the
    bits the uninterrupted run kept; a later micro-batch never replaces them."""
    loaded, model = top_lora
    data = micro_batches(loaded, chats)
    schedule = [[0, 5, 3], [1, 2, 4], [3, 1]]

    class Counted(FrozenBottom):
        fills: list[list[int]] = []

        def fill(self, llama, unit_ids):
            self.fills.append(unit_ids)
            super().fill(llama, unit_ids)

    pad = loaded.tokenizer.pad_token_id
    bottom = Counted(data.units, first_micro_batches(schedule), pad, 2)
    llama = causal_lm_of(model).model
    prefix, rows = bottom.rows(llama, [3, 1])  # resumed at the third micro-batch
    assert bottom.fills == schedule[:2] and bottom.hidden.keys() == set(range(6))
    assert prefix is None
    assert rows.shape == (2, max(data.lengths[3], data.lengths[1]), llama.config.hidden_size)
    kept = dict(bottom.hidden)
    bottom.rows(llama, [2, 3, 0])
    assert bottom.fills == schedule[:2]  # every later pass reads the cache
    bottom.fill(llama, [3, 1])  # not the first micro-batch of either: nothing is replaced
    assert all(bottom.hidden[unit] is kept[unit] for unit in kept)


def test_real_positions_do_not_depend_on_the_padding(top_lora, chats):
    loaded, model = top_lora
    data = micro_batches(loaded, chats)
    lengths = data.lengths
    assert len(set(lengths)) > 2  # rows of several widths: most are padded
    batch = data.collate(list(range(len(chats))))
    # collate pads on the right: with causal attention no real position sees a pad
    assert batch["attention_mask"].tolist() == [[1] * n + [0] * (max(lengths) - n) for n in lengths]
    llama = causal_lm_of(model).model
    pad, everything = loaded.tokenizer.pad_token_id, list(range(len(chats)))
    together = FrozenBottom(data.units, first_micro_batches([everything]), pad, 2)
    together.fill(llama, everything)
    for unit in everything:
        alone = FrozenBottom(data.units, first_micro_batches([[unit]]), pad, 2)
        alone.fill(llama, [unit])
        assert together.hidden[unit].shape == (lengths[unit], llama.config.hidden_size)
        torch.testing.assert_close(together.hidden[unit], alone.hidden[unit], rtol=1e-5, atol=1e-5)


def test_a_shared_prefix_fills_the_same_whole_rows(top_lora, chats):
    """Filled with the common prefix run once, the cache keeps every unit's whole row: the
    prefix's states copied in front of its own, as running the row alone gives."""
    loaded, model = top_lora
    data = micro_batches(loaded, chats, share_prefix=True)
    llama = causal_lm_of(model).model
    pad, everything = loaded.tokenizer.pad_token_id, list(range(len(chats)))
    assert data.collate(everything)["prefix_ids"].shape[1] > 4
    first = first_micro_batches([everything])
    shared = FrozenBottom(data.units, first, pad, 2, share_prefix=True)
    shared.fill(llama, everything)
    whole = FrozenBottom(data.units, first, pad, 2)
    whole.fill(llama, everything)
    for unit in everything:
        assert shared.hidden[unit].shape == (data.lengths[unit], llama.config.hidden_size)
        torch.testing.assert_close(shared.hidden[unit], whole.hidden[unit], rtol=1e-5, atol=1e-5)
    # a batch reads its prefix from the first unit and each row's states after it
    prefix, rows = shared.rows(llama, [4, 1], prefix_len=3)
    torch.testing.assert_close(prefix[0], shared.hidden[4][:3], rtol=0, atol=0)
    torch.testing.assert_close(rows[1, : data.lengths[1] - 3], shared.hidden[1][3:], rtol=0, atol=0)


@pytest.mark.parametrize("shared_prefix", [False, True], ids=["whole-rows", "shared-prefix"])
def test_later_epochs_run_no_frozen_layer(tmp_path, tiny_4_layer_model_dir, shared_prefix):
    cfg = config(
        tmp_path,
        tiny_4_layer_model_dir,
        *TOP,
        "train.epochs=3",
        "train.precision=fp32",
        f"train.shared_prefix={str(shared_prefix).lower()}",
    )
    run, state = setup(cfg, prepare(cfg, console=QUIET), console=QUIET)
    assert isinstance(run.accelerator.unwrap_model(run.forward), FrozenCacheForward)
    layers = causal_lm_of(run.model).model.layers
    calls = dict.fromkeys(range(4), 0)
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    per_epoch = math.ceil(len(run.data.units) / cfg.train.batch_size)
    fit(replace(run, last_step=per_epoch), state, QUIET)
    first = dict(calls)
    calls.update(dict.fromkeys(range(4), 0))
    fit(run, state, QUIET)
    assert len(run.schedule) == 3 * per_epoch and state.step == 3 * per_epoch
    # the frozen layers ran in the first epoch only; the adapted ones in every epoch
    assert calls[0] == calls[1] == 0 and calls[2] == calls[3] > 0
    if shared_prefix:  # a micro-batch that shares a prefix runs each layer twice: prefix, rows
        assert first[0] > per_epoch and first[2] > per_epoch
    else:  # one pass per layer and micro-batch
        assert first == dict.fromkeys(range(4), per_epoch)
        assert calls[2] == 2 * per_epoch


def test_training_with_and_without_the_cache_gives_the_same_weights(
    tmp_path, tiny_4_layer_model_dir
):
    weights = []
    for cached in (False, True):
        console = Console(record=True, file=io.StringIO())
        cfg = config(
            tmp_path / str(cached),
            tiny_4_layer_model_dir,
            *TOP,
            "train.epochs=2",
            f"train.cache_frozen_layers={cached}",
            "train.precision=fp32",  # fp32 rounding only ('auto' picks bf16 where it is fast)
        )
        out = train(cfg, prepare(cfg, console=QUIET), console=console).output_dir
        assert ("frozen-layer cache:" in console.export_text()) == cached
        weights.append(load_file(out / "adapter_model.safetensors"))
    plain, cached = weights
    assert plain.keys() == cached.keys()
    for name in plain:
        # as in test_shared_prefix: Adam grows rounding in near-zero gradient entries to ~1e-3 of
        # the weights' scale; a wrong gradient moves them by ~lr (0.02)
        scale = float(plain[name].abs().max())
        torch.testing.assert_close(
            cached[name], plain[name], rtol=1e-3, atol=1e-3 * scale, msg=name
        )


def varied_chats(path: Path) -> Path:
    """Enough rows that an epoch spans two length-grouping windows (32 micro-batches each), so a
    unit's micro-batch, and its padding, differ from one epoch to the next."""
    with (FIXTURES / "intents_train.csv").open() as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(0)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "category"])
        for i in range(120):
            first, second = rng.sample(rows, 2)
            text = f"{first['text']} {second['text']}" if i % 2 else first["text"]
            out.writerow([text, first["category"]])
    return path


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_4_layer_model_dir):
    """Killed in the second epoch, the resumed run's cache starts empty and is refilled; it ends
    with the same bits as a run that kept its cache. 'auto' precision: bf16 where fast."""
    data = varied_chats(tmp_path / "chats.csv")
    steps = [  # 9 optimiser steps an epoch
        f"data.train_files=[{data}]",
        "train.batch_size=2",
        "train.grad_accum_steps=6",
        "train.max_steps=14",
    ]
    adapters = []
    for name, kill_after_step in (("whole", None), ("resumed", random.Random().randint(10, 13))):
        root = tmp_path / name
        config(root, tiny_4_layer_model_dir)  # writes root/r.yaml
        run_worker(root / "r.yaml", *TOP, *steps, kill_after_step=kill_after_step)
        if kill_after_step is not None:
            run_worker(root / "r.yaml", *TOP, *steps)
        adapters.append(final_adapter(root))
    whole, resumed = adapters
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name


@pytest.mark.slow
def test_two_processes_with_the_cache_match_one_without(tmp_path, tiny_4_layer_model_dir):
    """DDP: each process keeps a cache of its own units, and meets in the second epoch units the
    other one ran first; the weights are those of one process running every layer."""
    env = worker_env()
    common = [*TOP, "train.epochs=2", "train.batch_size=4", "train.precision=fp32"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    runs = {  # the same global batch: 2 micro-batches of 4 per step
        "one": ([sys.executable], ["train.cache_frozen_layers=false", "train.grad_accum_steps=2"]),
        "two": (torchrun, ["train.cache_frozen_layers=true", "train.grad_accum_steps=1"]),
    }
    for name, (launcher, overrides) in runs.items():
        config(tmp_path / name, tiny_4_layer_model_dir)  # writes r.yaml
        command = [*launcher, str(WORKER), str(tmp_path / name / "r.yaml"), *common, *overrides]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = final_adapter(tmp_path / "one"), final_adapter(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        scale = float(one[name].abs().max())
        torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-3 * scale, msg=name)


def test_modes_it_does_not_apply_to_run_every_layer(top_lora, chats, monkeypatch):
    loaded, model = top_lora
    data = micro_batches(loaded, chats)
    twice = [[0, 1, 2], [3, 4, 5], [5, 4, 3], [2, 1, 0]]  # two epochs
    pad = loaded.tokenizer.pad_token_id

    def chosen(tc=TrainConfig(lora_layers=2), schedule=twice, sharded=False, model=model):
        return choose_forward(model, tc, data, schedule, pad_id=pad, sharded=sharded)

    forward, note = chosen()
    assert isinstance(forward, FrozenCacheForward) and "layers 0-1 of 4" in note
    assert forward.bottom.first_batch == first_micro_batches(twice[:2])
    silent = {
        "turned off": chosen(TrainConfig(lora_layers=2, cache_frozen_layers=False)),
        "every layer trains": chosen(TrainConfig()),
        "lora_layers >= layers": chosen(TrainConfig(lora_layers=4)),
        "full fine-tuning": chosen(TrainConfig(lora_layers=2, method="full")),
        "packing": chosen(TrainConfig(lora_layers=2, packing=True)),
        "activation checkpointing": chosen(
            TrainConfig(lora_layers=2, activation_checkpointing=True)
        ),
        "FSDP": chosen(sharded=True),
        "one epoch": chosen(schedule=twice[:2]),
    }
    for mode, (forward, note) in silent.items():
        assert type(forward) is ChunkedLossForward and note is None, mode

    mistral = MistralForCausalLM(
        MistralConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    forward, note = chosen(model=mistral)
    assert type(forward) is ChunkedLossForward and "Llama-family" in note

    # fp32 states of every token of every unit: the bound is for all processes' caches
    size = sum(data.lengths) * model.config.hidden_size * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(frozen_cache, "MAX_SHARE_OF_MEMORY", 1.5 * size / memory)
    assert isinstance(chosen()[0], FrozenCacheForward)
    forward, note = choose_forward(
        model, TrainConfig(lora_layers=2), data, twice, pad_id=pad, sharded=False, processes=2
    )
    assert type(forward) is ChunkedLossForward and "2 x 0.0 GiB would pass a quarter" in note
