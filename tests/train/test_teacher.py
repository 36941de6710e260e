"""A KL term to the base on replayed chats: soft targets from the base's own distributions."""

import pytest
import torch
from rich.console import Console

from tests.train.test_frozen_cache import intent_chats, lora_on_top, loss_and_grads
from tests.train.test_loop import config
from tunewright.data.prepare import prepare
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer
from tunewright.errors import ConfigError
from tunewright.models import load_model
from tunewright.train.frozen_cache import FrozenBottom, FrozenCacheForward, first_micro_batches
from tunewright.train.loop import train
from tunewright.train.loss import chunked_cross_entropy
from tunewright.train.micro_batches import MicroBatches
from tunewright.train.model_setup import ChunkedLossForward, causal_lm_of
from tunewright.train.replay import ReplayChat, encode_replay
from tunewright.train.teacher import TOP_K, base_distributions, trained_positions

QUIET = Console(quiet=True)


@pytest.fixture
def chats():
    return intent_chats()[:3]


def reference_loss(logits, targets, weights, soft_ids, soft_probs, hard_share):
    """sum_i w_i * CE(q_i, softmax(logits_i)), q_i = hard_i one-hot(y_i) + scattered soft probs."""
    q = torch.zeros_like(logits)
    q[torch.arange(len(targets)), targets] = hard_share
    q.scatter_add_(1, soft_ids, soft_probs)
    return -(weights * (q * logits.log_softmax(-1)).sum(-1)).sum()


@pytest.mark.parametrize("chunk_tokens", [3, 1024])
def test_soft_targets_loss_and_gradients_match_autograd(chunk_tokens):
    torch.manual_seed(0)
    n, h, v = 7, 5, 40
    hidden = torch.randn(1, n + 1, h, requires_grad=True)
    head = torch.randn(v, h, requires_grad=True)
    labels = torch.randint(0, v, (1, n + 1))
    labels[0, 3] = IGNORE_INDEX  # an untrained position is skipped
    kept = (labels[0, 1:] != IGNORE_INDEX).sum()
    soft_ids = torch.stack([torch.randperm(v)[:4] for _ in range(kept)])
    probs = torch.rand(kept, 4)
    share = torch.tensor([0.0, 0.3, 1.0, 0.5, 0.0, 0.7][:kept])
    soft_probs = probs / probs.sum(1, keepdim=True) * share[:, None]
    soft = (soft_ids, soft_probs, 1 - share)
    total, weight = chunked_cross_entropy(
        hidden, head, labels, chunk_tokens=chunk_tokens, soft=soft
    )
    total.backward()
    ours = (hidden.grad.clone(), head.grad.clone())
    hidden.grad = head.grad = None
    keep = labels[0, 1:] != IGNORE_INDEX
    logits = hidden[0, :-1][keep] @ head.T
    expected = reference_loss(logits, labels[0, 1:][keep], torch.ones(kept), *soft)
    expected.backward()
    torch.testing.assert_close(total, expected.detach())
    torch.testing.assert_close(ours[0], hidden.grad)
    torch.testing.assert_close(ours[1], head.grad)
    assert weight == kept
    with pytest.raises(ValueError, match="soft targets for"):
        chunked_cross_entropy(hidden, head, labels, soft=tuple(t[:-1] for t in soft))


def test_base_distributions_are_the_models_own_at_the_trained_positions(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    [example] = encode_replay(
        [ReplayChat("Describe rain.", "Rain is water falling.")], loaded.tokenizer, 128
    )
    [teacher] = base_distributions(loaded.model, [example], loaded.tokenizer.pad_token_id)
    positions = trained_positions(example.labels)
    assert teacher.token_ids.shape == teacher.probs.shape == (len(positions), TOP_K)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([example.input_ids])).logits[0]
    for row, t in enumerate(positions):
        probs = logits[t - 1].softmax(-1)
        top = probs.topk(TOP_K)
        assert teacher.token_ids[row].tolist() == top.indices.tolist()
        torch.testing.assert_close(teacher.probs[row], top.values / top.values.sum())
    torch.testing.assert_close(teacher.probs.sum(-1), torch.ones(len(positions)))


@pytest.mark.parametrize("share_prefix", [False, True])
def test_taught_rows_in_a_mixed_micro_batch_get_their_own_targets(
    tiny_4_layer_model_dir, chats, share_prefix
):
    loaded, model = lora_on_top(tiny_4_layer_model_dir, "fp32")
    replay = encode_replay(
        [ReplayChat("Describe rain.", "Rain is water."), ReplayChat("Name a fruit.", "Apple.")],
        loaded.tokenizer,
        128,
    )
    teachers = base_distributions(causal_lm_of(model), replay, loaded.tokenizer.pad_token_id)
    chat = ChatTokenizer(loaded.tokenizer, "Name the intent.", 128)
    pad = loaded.tokenizer.pad_token_id
    data = MicroBatches.build(
        chat,
        chats[:3],
        pad,
        packing=False,
        max_seq_len=128,
        extra=replay,
        extra_teachers=teachers,
        teacher_weight=0.6,
        share_prefix=share_prefix,
    )
    indices = [3, 0, 4, 1]  # taught and untaught rows mixed
    nll, weight, _ = loss_and_grads(ChunkedLossForward(model), data.collate(indices))
    expected = torch.zeros(())
    for i in indices:  # each row alone, its whole sequence, against its own target
        unit = data.units[i]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([unit.input_ids])).logits[0]
        positions = trained_positions(unit.labels)
        teacher = data.teachers[i]
        share = 0.6 if teacher is not None else 0.0
        soft_ids = (
            teacher.token_ids if teacher else torch.zeros((len(positions), TOP_K), dtype=torch.long)
        )
        soft_probs = teacher.probs * share if teacher else torch.zeros((len(positions), TOP_K))
        expected += reference_loss(
            logits[[t - 1 for t in positions]],
            torch.tensor([unit.labels[t] for t in positions]),
            torch.ones(len(positions)),
            soft_ids,
            soft_probs,
            torch.full((len(positions),), 1 - share),
        )
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    # the frozen-layer cache's forward reads the same targets
    schedule = [indices, indices]
    bottom = FrozenBottom(data.units, first_micro_batches(schedule), pad, 2)
    cached, _, _ = loss_and_grads(FrozenCacheForward(model, bottom), data.collate(indices))
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)


def test_a_run_with_the_kl_term_trains_on_the_soft_targets(tmp_path, tiny_model_dir, monkeypatch):
    from tunewright.train import replay as replay_module

    monkeypatch.setattr(
        replay_module,
        "_generate_answers",
        lambda model, tokenizer, prompts: {p: ReplayChat(p, f"An answer to {p}") for p in prompts},
    )

    def final_loss(name, *overrides):
        cfg = config(
            tmp_path / name,
            tiny_model_dir,
            "train.epochs=1",
            "data.max_seq_len=256",
            "train.general_replay=4",
            *overrides,
        )
        dataset = prepare(cfg, console=QUIET)
        return train(cfg, dataset, console=QUIET)

    plain = final_loss("plain")
    taught = final_loss("kl", "train.general_replay_kl=1.0")
    assert plain.steps == taught.steps and plain.trained_tokens == taught.trained_tokens
    assert taught.train_loss != plain.train_loss  # the replayed rows learnt other targets
    with pytest.raises(ConfigError, match="packing"):
        config(tmp_path / "x", tiny_model_dir, "train.general_replay_kl=0.5", "train.packing=true")
