"""Shared-prefix training: the common prompt start runs once per micro-batch, with the same
loss and gradients as running every row in full."""

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from tests.train.test_loop import config
from tunewright.config import TrainConfig
from tunewright.data.prepare import prepare
from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer, TokenizedExample
from tunewright.models import load_model
from tunewright.train.loop import train
from tunewright.train.micro_batches import MicroBatches
from tunewright.train.model_setup import ChunkedLossForward, apply_training_method
from tunewright.train.shared_prefix import MIN_SHARED_TOKENS, shared_prefix_length, split_prefix

QUIET = Console(quiet=True)
I = IGNORE_INDEX


def test_prefix_stops_before_the_first_trained_position():
    rows = [
        TokenizedExample([1, 2, 3, 4, 5, 6, 7, 8], [I, I, I, I, I, I, 7, 8]),
        TokenizedExample([1, 2, 3, 4, 5, 6, 7, 9], [I, I, I, I, I, I, 7, 9]),
    ]
    # the common prefix is 7 tokens, but position 5 predicts the first target (index 6)
    assert shared_prefix_length(rows) == 5
    prefix, rest = split_prefix(rows, 5)
    assert (
        prefix == [1, 2, 3, 4, 5] and rest[0].input_ids == [6, 7, 8] and rest[1].labels == [I, 7, 9]
    )


def test_no_prefix_when_not_worth_it_or_not_allowed():
    prompt = list(range(1, 11))
    one = TokenizedExample([*prompt, 50], [I] * 10 + [50])
    assert shared_prefix_length([one]) == 0  # a single row: nothing to share
    raw_text = [
        TokenizedExample([1, 2, 3, 4, 5, 6], [I, 2, 3, 4, 5, 6]),
        TokenizedExample([1, 2, 3, 4, 5, 7], [I, 2, 3, 4, 5, 7]),
    ]
    assert shared_prefix_length(raw_text) == 0  # every position is trained
    short = [
        TokenizedExample([1, 2, 9, 9], [I, I, I, 9]),
        TokenizedExample([1, 2, 8, 8], [I, I, I, 8]),
    ]
    assert shared_prefix_length(short) == 0 < MIN_SHARED_TOKENS


@pytest.fixture(scope="module")
def chats():
    return [
        Example(messages=(Message("user", text), Message("assistant", label)))
        for text, label in [
            ("I lost my card", "lost_card"),
            ("my card has not arrived yet, where is it?", "card_arrival"),
            ("how do I top up", "top_up"),
            ("the exchange rate is wrong on my payment", "exchange_rate"),
        ]
    ]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_loss_and_gradients_equal_running_every_row_in_full(tiny_model_dir, chats, method):
    loaded = load_model(str(tiny_model_dir))
    chat = ChatTokenizer(loaded.tokenizer, "Name the intent.", 64)
    torch.manual_seed(0)
    model = apply_training_method(loaded.model, TrainConfig(method=method), "fp32")
    if (
        method == "lora"
    ):  # lora_B starts at zero: move it, so the adapter's gradients are not trivial
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    forward = ChunkedLossForward(model)
    results = []
    for share in (False, True):
        data = MicroBatches.build(
            chat,
            chats,
            loaded.tokenizer.pad_token_id,
            packing=False,
            max_seq_len=64,
            share_prefix=share,
        )
        batch = data.collate(list(range(len(chats))))
        assert ("prefix_ids" in batch) == share
        model.zero_grad()
        nll, weight = forward(**batch)
        nll.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((nll.detach(), weight, grads, batch))
    (full_nll, full_w, full_grads, full_batch), (nll, w, grads, shared_batch) = results
    # the system prompt and the user header were run once, not once per row
    assert shared_batch["prefix_ids"].shape[1] >= 8
    assert (
        shared_batch["input_ids"].shape[1] + shared_batch["prefix_ids"].shape[1]
        == full_batch["input_ids"].shape[1]
    )
    torch.testing.assert_close(nll, full_nll, rtol=1e-5, atol=1e-5)
    assert w == full_w
    assert grads.keys() == full_grads.keys() and grads
    for name in grads:
        assert full_grads[name].abs().sum() > 0 or method == "full", name
        # float rounding only: differences ~1e-6 of the gradient's scale (a detached prefix gives ~1)
        scale = float(full_grads[name].abs().max())
        torch.testing.assert_close(
            grads[name], full_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name
        )


def test_training_with_and_without_sharing_gives_the_same_weights(tmp_path, tiny_model_dir):
    weights = []
    for share in (False, True):
        cfg = config(
            tmp_path / str(share),
            tiny_model_dir,
            "train.max_steps=3",
            f"train.shared_prefix={share}",
            "train.precision=fp32",  # fp32 rounding only ('auto' picks bf16 where it is fast)
            "data.system_prompt=Name the intent.",
        )
        out = train(cfg, prepare(cfg, console=QUIET), console=QUIET).output_dir
        weights.append(load_file(out / "adapter_model.safetensors"))
    plain, shared = weights
    assert plain.keys() == shared.keys()
    for name in plain:
        # Adam divides by the gradient's running scale, so rounding in near-zero gradient entries
        # grows to ~3e-4 of the weights' scale after 3 steps; a wrong gradient moves them by ~lr (0.02)
        scale = float(plain[name].abs().max())
        torch.testing.assert_close(
            shared[name], plain[name], rtol=1e-3, atol=1e-3 * scale, msg=name
        )
