"""Class weights for labelled data: each label's share of the loss, and what training does with it."""

import math

import pytest
import torch
from peft import PeftModel
from rich.console import Console

from tests.train.test_loop import config
from tunewright.data.prepare import prepare
from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer
from tunewright.models import load_model
from tunewright.train.label_weights import label_weights
from tunewright.train.loop import train
from tunewright.train.micro_batches import MicroBatches

QUIET = Console(quiet=True)


def test_balanced_weights_give_every_label_the_same_share():
    labels = ["a"] * 6 + ["b"] * 2 + ["c"] + [None]
    w = label_weights(labels, "balanced")
    assert {k: w[k] * n for k, n in [("a", 6), ("b", 2), ("c", 1)]} == pytest.approx(
        {"a": 3.0, "b": 3.0, "c": 3.0}
    )
    assert math.isclose((6 * w["a"] + 2 * w["b"] + w["c"]) / 9, 1.0)  # unlabelled rows do not count
    s = label_weights(labels, "sqrt")
    assert math.isclose(s["c"] / s["a"], math.sqrt(6)) and math.isclose(
        (6 * s["a"] + 2 * s["b"] + s["c"]) / 9, 1.0
    )
    assert label_weights(labels, "none") == {}
    assert label_weights(["a", "a", None], "balanced") == {}  # one label: nothing to balance


def test_micro_batches_weight_each_examples_trained_tokens_by_its_label(tiny_model_dir):
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    chat = ChatTokenizer(tokenizer, "Sentiment?", 64)
    examples = [
        Example(messages=(Message("user", f"tweet {i}"), Message("assistant", label)), label=label)
        for i, label in enumerate(["neutral"] * 3 + ["bearish"])
    ]
    plain = MicroBatches.build(
        chat, examples, tokenizer.pad_token_id, packing=False, max_seq_len=64
    )
    weighted = MicroBatches.build(
        chat,
        examples,
        tokenizer.pad_token_id,
        packing=False,
        max_seq_len=64,
        label_weighting="balanced",
    )
    # 3 neutral, 1 bearish: weights 2/3 and 2 (each label's total is 2; the mean example weighs 1)
    for i, expected in enumerate([2 / 3] * 3 + [2.0]):
        unit = weighted.units[i]
        trained = [w for w, t in zip(unit.loss_weights, unit.labels) if t != IGNORE_INDEX]
        untrained = [w for w, t in zip(unit.loss_weights, unit.labels) if t == IGNORE_INDEX]
        assert trained and all(math.isclose(w, expected) for w in trained) and not any(untrained)
        # a step is normalised by its tokens' own weight, so that a micro-batch of one label keeps
        # its class weight instead of dividing it back out
        assert weighted.weight([i]) == plain.weight([i])
    assert all(unit.loss_weights is None for unit in plain.units)
    packed = MicroBatches.build(
        chat,
        examples,
        tokenizer.pad_token_id,
        packing=True,
        max_seq_len=256,
        label_weighting="balanced",
    )
    assert len(packed.units) == 1 and packed.weight([0]) == plain.weight([0, 1, 2, 3])
    assert sorted({round(w, 6) for w in packed.units[0].loss_weights}) == [
        0.0,
        round(2 / 3, 6),
        2.0,
    ]


def test_balanced_weighting_moves_the_model_towards_the_minority_label(tmp_path, tiny_model_dir):
    # every row asks the same question, so all the model can learn is the label prior: 7 of 8
    # answers are "good". Unweighted, the minority answer ends near p = 1/8 (NLL ~ ln 8 = 2.1);
    # balanced, both labels weigh the same and it ends near p = 1/2 (ln 2 = 0.7). The labels
    # have the same number of tokens, so length grouping mixes them in every micro-batch
    data = tmp_path / "reviews.csv"
    data.write_text(
        "text,category\n"
        + "".join(f"how was it?,{'bad' if i % 8 == 0 else 'good'}\n" for i in range(48))
    )
    minority_loss = {}
    for mode in ("none", "balanced"):
        cfg = config(
            tmp_path / mode,
            tiny_model_dir,
            f"data.train_files=[{data}]",
            "data.test_files=[]",
            "data.val_fraction=0",
            "train.epochs=8",
            f"train.label_weighting={mode}",
        )
        dataset = prepare(cfg, console=QUIET)
        out = train(cfg, dataset, console=QUIET).output_dir
        loaded = load_model(str(tiny_model_dir))
        model = PeftModel.from_pretrained(loaded.model, out).eval()
        minority = next(e for e in dataset.train if e.label == "bad")
        encoded = ChatTokenizer(loaded.tokenizer, cfg.data.system_prompt, 64).encode_example(
            minority
        )
        with (
            torch.no_grad()
        ):  # mean loss over the answer's tokens (the label's and the end of turn)
            loss = model(
                input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])
            ).loss
        minority_loss[mode] = float(loss) * encoded.num_trained_tokens  # the answer's whole NLL
    assert minority_loss["none"] > 1.5 and minority_loss["balanced"] < 1.2, minority_loss
