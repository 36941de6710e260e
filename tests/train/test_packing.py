"""Packing must be invisible to the model: a packed batch computes what each example computes alone."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from tunewright.dataset.tokenize import IGNORE_INDEX
from tunewright.train.packing import (
    PackedRow,
    collate_packed,
    collate_packed_varlen,
    pack_examples,
)

VOCAB = 128
PAD_ID = 0
MAX_SEQ_LEN = 64


def make_examples(n: int, seed: int, max_len: int = 40) -> list[dict]:
    """Random examples; some train every token (so a label sits on the first token), some mask a
    prompt, one trains nothing after its first token."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        length = rng.randint(1, max_len)
        ids = [rng.randrange(1, VOCAB) for _ in range(length)]
        prompt = 0 if i % 3 == 0 else rng.randint(0, length - 1)
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        examples.append({"input_ids": ids, "labels": labels})
    examples.append({"input_ids": [5, 6, 7], "labels": [5, IGNORE_INDEX, IGNORE_INDEX]})
    return examples


def reference_first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """The textbook O(n^2) algorithm, to check the segment tree against."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, space in enumerate(free):
            if space >= lengths[i]:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def test_packing_keeps_every_example_once_within_max_seq_len() -> None:
    examples = make_examples(300, seed=1, max_len=MAX_SEQ_LEN)
    rows = pack_examples(examples, MAX_SEQ_LEN)

    placed = sorted(i for row in rows for i in row.example_indices)
    assert placed == list(range(len(examples)))
    for row in rows:
        assert row.num_tokens <= MAX_SEQ_LEN
        assert len(row.labels) == len(row.position_ids) == row.num_tokens == sum(row.seq_lens)
        offset = 0
        for i, length in zip(row.example_indices, row.seq_lens, strict=True):
            example = examples[i]
            assert row.input_ids[offset : offset + length] == example["input_ids"]
            assert row.labels[offset] == IGNORE_INDEX
            assert row.labels[offset + 1 : offset + length] == example["labels"][1:]
            assert row.position_ids[offset : offset + length] == list(range(length))
            offset += length

    lengths = [len(e["input_ids"]) for e in examples]
    assert [r.example_indices for r in rows] == reference_first_fit_decreasing(lengths, MAX_SEQ_LEN)
    assert pack_examples(examples, MAX_SEQ_LEN) == rows  # deterministic
    shuffled = pack_examples(examples, MAX_SEQ_LEN, seed=3)
    assert shuffled != rows and sorted(shuffled, key=lambda r: r.example_indices) == sorted(
        rows, key=lambda r: r.example_indices
    )


def test_over_long_example_is_rejected() -> None:
    with pytest.raises(AssertionError, match="max is 4"):
        pack_examples([{"input_ids": [1] * 5, "labels": [1] * 5}], max_seq_len=4)


def test_loss_weights_follow_their_tokens() -> None:
    examples = [
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "loss_weights": [0.5, 0.5, 2.0]},
        {"input_ids": [4, 5], "labels": [4, 5]},  # no weights: 1 per token
    ]
    rows = pack_examples(examples, max_seq_len=8)
    assert rows[0].loss_weights == [0.5, 0.5, 2.0, 1.0, 1.0]
    unweighted = pack_examples(examples[1:], max_seq_len=8)
    assert unweighted[0].loss_weights is None
    batch = collate_packed(rows + unweighted, pad_token_id=PAD_ID)
    assert batch["loss_weights"].tolist() == [[0.5, 0.5, 2.0, 1.0, 1.0], [1.0, 1.0, 0, 0, 0]]
    varlen = collate_packed_varlen(unweighted + rows)
    assert varlen["loss_weights"].tolist() == [[1.0, 1.0, 0.5, 0.5, 2.0, 1.0, 1.0]]


def test_mask_is_block_diagonal_and_causal() -> None:
    row = PackedRow([1, 2, 3], [-100, 2, -100], [0, 1, 0], [2, 1], [0, 1])
    batch = collate_packed(
        [row, PackedRow([4], [-100], [0], [1], [2])], pad_token_id=PAD_ID, mask_dtype=torch.bool
    )
    expected = torch.tensor(
        [
            [[1, 0, 0], [1, 1, 0], [0, 0, 1]],
            [[1, 0, 0], [0, 1, 0], [0, 1, 1]],  # padding is its own causal segment
        ],
        dtype=torch.bool,
    )
    assert torch.equal(batch["attention_mask"][:, 0], expected)
    assert batch["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, -100], [-100, -100, -100]]


# --- the model sees no difference ---------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tensors this small finish before extra threads wake up; on a busy 2-core machine more
    # threads made each forward+backward ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_model(attn_implementation: str) -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    return model.float().eval()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return build_model(request.param)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq-1) NLL of each next-token target; 0 where the target is ignored."""
    return F.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


def losses_alone(model: PreTrainedModel, examples: list[dict]) -> dict[int, torch.Tensor]:
    losses = {}
    for i, example in enumerate(examples):
        labels = torch.tensor([example["labels"]])
        if (labels[:, 1:] != IGNORE_INDEX).sum() == 0:
            continue  # nothing trained: no per-example loss to compare
        logits = model(input_ids=torch.tensor([example["input_ids"]])).logits
        losses[i] = token_nll(logits, labels).sum() / (labels[:, 1:] != IGNORE_INDEX).sum()
    return losses


def losses_packed(
    model: PreTrainedModel, rows: list[PackedRow], batch: dict[str, torch.Tensor]
) -> dict[int, torch.Tensor]:
    inputs = {
        k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")
    }
    # Without a mask, transformers infers the packing from position_ids only when no KV cache
    # exists, and Llama creates one unless told not to: a training loop must pass use_cache=False.
    use_cache = "attention_mask" in inputs
    nll = token_nll(model(**inputs, use_cache=use_cache).logits, batch["labels"])
    trained = batch["labels"][:, 1:] != IGNORE_INDEX
    # (batch row, offset) of each packed row: the varlen layout lays all rows end to end in row 0
    starts = [(r, 0) for r in range(len(rows))]
    if nll.shape[0] == 1:
        starts = [(0, sum(row.num_tokens for row in rows[:r])) for r in range(len(rows))]
    losses = {}
    for row, (b, offset) in zip(rows, starts, strict=True):
        for i, length in zip(row.example_indices, row.seq_lens, strict=True):
            # targets of example i are its tokens 1..length-1: shifted positions offset..
            span = slice(offset, offset + length - 1)
            if count := trained[b, span].sum():
                losses[i] = nll[b, span].sum() / count
            offset += length
    return losses


@pytest.mark.parametrize("layout", ["mask_4d", "position_ids_only", "varlen"])
def test_packed_losses_and_gradients_equal_unpacked(model: PreTrainedModel, layout: str) -> None:
    examples = make_examples(14, seed=7)
    rows = pack_examples(examples, MAX_SEQ_LEN, seed=0)
    assert any(len(row.seq_lens) > 1 for row in rows)
    if layout == "varlen":
        batch = collate_packed_varlen(rows)
    else:
        batch = collate_packed(rows, pad_token_id=PAD_ID)
        assert batch["input_ids"].shape[1] == max(r.num_tokens for r in rows)
        if layout == "position_ids_only":
            # transformers infers the packing from position_ids when no mask is given
            del batch["attention_mask"]

    model.zero_grad()
    alone = losses_alone(model, examples)
    sum(alone.values()).backward()
    grads_alone = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    packed = losses_packed(model, rows, batch)
    sum(packed.values()).backward()

    assert packed.keys() == alone.keys() and len(alone) >= 10
    for i in alone:
        torch.testing.assert_close(packed[i], alone[i], atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads_alone[name], atol=1e-5, rtol=1e-5, msg=name)


def test_bool_mask_matches_additive_mask_with_sdpa() -> None:
    model = build_model("sdpa")
    rows = pack_examples(make_examples(10, seed=3), MAX_SEQ_LEN)
    additive = collate_packed(rows, pad_token_id=PAD_ID)
    boolean = collate_packed(rows, pad_token_id=PAD_ID, mask_dtype=torch.bool)
    with torch.no_grad():
        logits = [
            model(
                input_ids=b["input_ids"],
                attention_mask=b["attention_mask"],
                position_ids=b["position_ids"],
            ).logits
            for b in (additive, boolean)
        ]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
