"""Preference tuning (train/preference.py, train/pairs.py) on the tiny model: the DPO, IPO and ORPO
losses and their gradients against plain autograd, training raises chosen over rejected, exact
resume, whole pairs per micro-batch, and the configurations it refuses."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from tests.train.test_resume import worker_env
from tunewright.config import RunConfig, TrainConfig
from tunewright.dataset.example import Example, Message
from tunewright.dataset.prepared import PreparedDataset
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer
from tunewright.errors import DataError
from tunewright.models import load_model
from tunewright.train.loop import train
from tunewright.train.model_setup import apply_training_method
from tunewright.train.pairs import PairBatches, encode_pairs, reference_log_probs, with_reference
from tunewright.train.preference import PairStats, PreferenceForward, pair_loss_of
from tunewright.train.setup import setup

QUIET = Console(quiet=True)
WORKER = Path(__file__).with_name("preference_worker.py")
BETA = 0.5


def pair(question: str, chosen: str, rejected: str) -> Example:
    return Example(
        messages=(Message("user", question), Message("assistant", chosen)),
        rejected=rejected,
        source=f"pairs.jsonl:{question}",
    )


def preference_pairs() -> list[Example]:
    """Intent questions, the right intent chosen and a wrong one rejected."""
    return [
        pair("I lost my card", "lost_card", "top_up"),
        pair("how do I top up", "top_up", "lost_card"),
        pair("my card has not arrived yet, where is it?", "card_arrival", "exchange_rate"),
        pair("the exchange rate is wrong on my payment", "exchange_rate", "card_arrival"),
        pair("card lost", "lost_card", "transfer_fee"),
        pair("why was I charged a fee for my transfer?", "transfer_fee", "top_up"),
        pair("where is my new card", "card_arrival", "lost_card"),
    ]


def preference_dataset() -> PreparedDataset:
    examples = preference_pairs()
    return PreparedDataset(Path("unused"), train=examples[:6], val=examples[6:], test=[])


def run_config(root: Path, model_dir: Path, **train) -> RunConfig:
    settings = {
        "objective": "dpo",
        "beta": BETA,
        "epochs": 10,
        "batch_size": 2,
        "lr": 0.02,
        "lr_warmup_steps": 0,
        "log_every_steps": 1,
        "precision": "fp32",
        "report_to": [],
    } | train
    return RunConfig.model_validate(
        {
            "name": "t",
            "output_dir": str(root / "runs"),
            "model": {"name": str(model_dir)},
            "data": {"max_seq_len": 128},
            "train": settings,
        }
    )


def metrics(cfg: RunConfig) -> list[dict]:
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "train_loss" in row]


# --- the losses and their gradients against plain autograd -----------------------------------


def plain_log_probs(model, batch) -> torch.Tensor:
    """Each row's summed log-prob of its labelled tokens, from the model's own logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = logits[:, :-1].float().log_softmax(-1)
    labels = batch["labels"][:, 1:]
    trained = labels != IGNORE_INDEX
    picked = logp.gather(2, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (picked * trained).sum(1)


def by_hand(loss: str, logps: list[float], tokens: list[int], ref: list[float]) -> float:
    """One pair's loss, written from the papers: logps, tokens and ref are (chosen, rejected)."""
    (c, r), (nc, nr), (rc, rr) = logps, tokens, ref
    if loss == "sigmoid":
        margin = BETA * ((c - rc) - (r - rr))
        return math.log(1 + math.exp(-margin))  # -log sigmoid(margin)
    if loss == "ipo":
        return ((c - rc) / nc - (r - rr) / nr - 1 / (2 * BETA)) ** 2

    def log_odds(mean):
        return mean - math.log(1 - math.exp(mean))

    ratio = log_odds(c / nc) - log_odds(r / nr)
    return -c / nc + BETA * math.log(1 + math.exp(-ratio))


def in_torch(loss: str, logps, tokens, ref) -> torch.Tensor:
    """The same losses as `by_hand`, over all pairs ([P, 2] each), for plain autograd."""
    c, r = logps[:, 0], logps[:, 1]
    if loss == "sigmoid":
        return -torch.nn.functional.logsigmoid(BETA * ((c - ref[:, 0]) - (r - ref[:, 1]))).sum()
    if loss == "ipo":
        h = (c - ref[:, 0]) / tokens[:, 0] - (r - ref[:, 1]) / tokens[:, 1]
        return ((h - 1 / (2 * BETA)) ** 2).sum()
    mean = logps / tokens
    log_odds = mean - torch.log1p(-torch.exp(mean))
    ratio = log_odds[:, 0] - log_odds[:, 1]
    return (-mean[:, 0] - BETA * torch.nn.functional.logsigmoid(ratio)).sum()


@pytest.fixture(scope="module")
def policy_and_pairs(tiny_model_dir):
    """LoRA with lora_B moved off zero (so the policy differs from the base), two pairs, and the
    base's reference log-probs computed before the adapter existed."""
    loaded = load_model(str(tiny_model_dir))
    chat = ChatTokenizer(loaded.tokenizer, "Name the intent.", 64)
    pairs = encode_pairs(chat, preference_pairs()[:2], "train", "dpo")
    pad = loaded.tokenizer.pad_token_id
    reference = reference_log_probs(loaded.model, pairs, pad)
    base_batch = PairBatches.build(pairs, pad).collate([0, 1])
    with torch.no_grad():
        plain_reference = plain_log_probs(loaded.model, base_batch)
    torch.manual_seed(0)
    model = apply_training_method(loaded.model, TrainConfig(lora_dropout=0.0), "fp32")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model, pairs, pad, reference, plain_reference


def test_reference_log_probs_are_the_models_before_training(policy_and_pairs, tiny_model_dir):
    model, pairs, pad, reference, plain_reference = policy_and_pairs
    torch.testing.assert_close(reference.flatten(), plain_reference, rtol=1e-5, atol=1e-5)
    # a new adapter adds zero: the reference setup computes with it is the base's
    loaded = load_model(str(tiny_model_dir))
    fresh = apply_training_method(loaded.model, TrainConfig(), "fp32")
    (data,) = with_reference(fresh, (PairBatches.build(pairs, pad),), pad, nullcontext)
    assert torch.equal(data.reference, reference)
    # an adapter that is not new (continued from SFT) is part of the reference
    (data,) = with_reference(model, (PairBatches.build(pairs, pad),), pad, nullcontext)
    with torch.no_grad():
        policy = plain_log_probs(model, data.collate([0, 1]))
    torch.testing.assert_close(data.reference.flatten(), policy, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, plain_reference, atol=1e-3), "lora_B is not zero"


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize(("objective", "loss"), [("dpo", "sigmoid"), ("dpo", "ipo"), ("orpo", "")])
def test_loss_and_gradients_equal_plain_autograd(policy_and_pairs, objective, loss, share_prefix):
    model, pairs, pad, reference, _ = policy_and_pairs
    tc = TrainConfig(objective=objective, beta=BETA, **({"dpo_loss": loss} if loss else {}))
    stats = PairStats(log_odds=objective == "orpo")
    forward = PreferenceForward(model, pair_loss_of(tc), BETA, stats)
    data = PairBatches.build(
        pairs,
        pad,
        reference=reference if objective == "dpo" else None,
        share_prefix=share_prefix,
    )
    batch = data.collate([0, 1])
    assert ("prefix_ids" in batch) == share_prefix  # the pairs share their system prompt at least
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    model.zero_grad()
    value, count = forward(**batch)
    value.backward()
    grads = {n: p.grad.clone() for n, p in trainable.items()}

    model.zero_grad()
    plain_batch = PairBatches.build(pairs, pad).collate([0, 1])
    logps = plain_log_probs(model, plain_batch).view(2, 2)
    tokens = (plain_batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).float().view(2, 2)
    ref = reference.view(2, 2)
    expected = sum(
        by_hand(loss or "orpo", logps[p].tolist(), tokens[p].tolist(), ref[p].tolist())
        for p in range(2)
    )
    in_torch(loss or "orpo", logps, tokens, ref).backward()

    assert float(count) == 2.0
    assert float(value.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    for name, p in trainable.items():
        assert p.grad.abs().sum() > 0, name
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
    logged = stats.take(_OneProcess())
    assert logged["chosen_logp"] == pytest.approx(float(logps[:, 0].detach().mean()), rel=1e-4)
    assert ("log_odds_ratio" in logged) == (objective == "orpo")


class _OneProcess:
    """The part of an `Accelerator` that `PairStats.take` uses, for one process."""

    device = torch.device("cpu")

    def reduce(self, tensor, reduction):
        return tensor


# --- training ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "method"), [("dpo", "lora"), ("orpo", "lora"), ("dpo", "full")]
)
def test_training_raises_chosen_over_rejected(tmp_path, tiny_model_dir, objective, method):
    extra = {"method": method, "lr": 0.003} if method == "full" else {}
    cfg = run_config(tmp_path, tiny_model_dir, objective=objective, eval_every_steps=10, **extra)
    result = train(cfg, preference_dataset(), console=QUIET)
    rows = metrics(cfg)
    first, last = rows[0], rows[-1]
    assert last["reward_margin"] > first["reward_margin"] + 0.5, (first, last)
    assert last["reward_accuracy"] == 1.0
    gap = lambda row: row["chosen_logp"] - row["rejected_logp"]  # noqa: E731
    assert gap(last) > gap(first) + 2, (first, last)
    assert last["train_loss"] < first["train_loss"]
    assert result.val_loss is not None and result.output_dir is not None
    val = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val_reward_accuracy" in row for row in val)
    if objective == "dpo" and method == "lora":
        # the adapter starts as the base: every reward margin starts at zero
        assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_dry_run_writes_nothing(tmp_path, tiny_model_dir):
    cfg = run_config(tmp_path, tiny_model_dir, objective="orpo")
    result = train(cfg, preference_dataset(), console=QUIET, dry_run_steps=2)
    assert result.output_dir is None and result.eta_seconds > 0
    assert not (cfg.run_dir / "metrics.jsonl").exists()


def test_resume_from_a_checkpoint_equals_uninterrupted(tmp_path, tiny_model_dir):
    cfg = run_config(
        tmp_path,
        tiny_model_dir,
        lora_dropout=0.2,  # draws from the RNG: a resume must restore it
        max_steps=4,
        checkpoint_every_steps=1,
        keep_checkpoints=4,
        resume=True,
    )
    dataset = preference_dataset()
    out = train(cfg, dataset, console=QUIET).output_dir
    whole = load_file(out / "adapter_model.safetensors")
    for late in ("step-00000003", "step-00000004"):  # as if killed after step 2
        shutil.rmtree(cfg.run_dir / "checkpoints" / late)
    shutil.rmtree(out)
    resumed = load_file(train(cfg, dataset, console=QUIET).output_dir / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize(("batch_size", "grad_accum_steps"), [(1, 3), (4, 1), (3, 2)])
def test_micro_batches_hold_whole_pairs(tmp_path, tiny_model_dir, batch_size, grad_accum_steps):
    cfg = run_config(
        tmp_path, tiny_model_dir, batch_size=batch_size, grad_accum_steps=grad_accum_steps
    )
    run, _ = setup(cfg, preference_dataset(), console=QUIET)
    epoch = run.schedule[: math.ceil(6 / batch_size)]
    assert sorted(i for batch in epoch for i in batch) == list(range(6)), "pairs are the units"
    for indices in run.schedule:
        assert len(indices) <= batch_size
        batch = run.data.collate(indices)
        rows = batch["input_ids"]
        if "prefix_ids" in batch:
            rows = torch.cat([batch["prefix_ids"].expand(len(rows), -1), rows], 1)
        assert len(rows) == 2 * len(indices) == len(batch["reference_logps"])
        for k, i in enumerate(indices):  # row 2k is pair i's chosen side, 2k + 1 its rejected
            for row, side in (
                (2 * k, run.data.pairs[i].chosen),
                (2 * k + 1, run.data.pairs[i].rejected),
            ):
                assert rows[row, : len(side.input_ids)].tolist() == side.input_ids


# --- what is refused -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"packing": True}, r"train.packing=True does not apply to train.objective 'dpo'"),
        ({"general_replay": 10}, r"train.general_replay=10 does not apply"),
        ({"label_weighting": "balanced"}, r"train.label_weighting='balanced' does not apply"),
        ({"objective": "orpo", "dpo_loss": "ipo"}, r"train.dpo_loss is 'ipo' .* dpo only"),
    ],
)
def test_settings_that_make_no_sense_are_refused(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        run_config(tmp_path, Path("m"), **settings)


def test_data_without_pairs_is_refused_naming_the_row(tmp_path, tiny_model_dir):
    examples = preference_pairs()
    plain = Example(messages=examples[1].messages, source="chats.jsonl:2")
    dataset = PreparedDataset(Path("unused"), train=[examples[0], plain], val=[], test=[])
    cfg = run_config(tmp_path, tiny_model_dir)
    with pytest.raises(
        DataError, match=r"row 2 of the train split \(chats.jsonl:2\) has no rejected"
    ):
        train(cfg, dataset, console=QUIET)


# --- a separate process: SIGKILL and resume --------------------------------------------------


def run_worker(
    root: Path,
    model_dir: Path,
    *,
    kill_after_step: int | None = None,
    processes: int = 1,
    **train_settings,
) -> None:
    """Train in a separate process (`processes` > 1: under torchrun); with `kill_after_step`,
    SIGKILL it once that step's checkpoint is complete."""
    settings = {
        "lora_dropout": 0.2,
        "max_steps": 8,
        "checkpoint_every_steps": 1,
        "keep_checkpoints": 2,
        "resume": True,
    }
    cfg = run_config(root, model_dir, **(settings | train_settings))
    root.mkdir(parents=True, exist_ok=True)
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    proc = subprocess.Popen(
        [sys.executable, *(launcher if processes > 1 else []), str(WORKER), str(recipe)],
        env=worker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after_step is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        return
    marker = cfg.run_dir / "checkpoints" / f"step-{kill_after_step:08d}" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_worker(whole, tiny_model_dir)
    run_worker(broken, tiny_model_dir, kill_after_step=3)
    adapter = Path("runs") / "t" / "adapter" / "adapter_model.safetensors"
    assert not (broken / adapter).exists()
    run_worker(broken, tiny_model_dir)
    first_steps = [row["step"] for row in metrics(run_config(broken, tiny_model_dir))]
    assert first_steps.count(1) == 1, "the second run resumed rather than starting over"
    a, b = load_file(whole / adapter), load_file(broken / adapter)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, sharding):
    """The same code path as SFT under DDP and FSDP: pairs split over two processes."""
    common = {"max_steps": 3, "fsdp": sharding == "fsdp", "lora_dropout": 0.0, "lr": 0.005}
    if (
        sharding == "fsdp"
    ):  # FSDP runs every row in full; so must the one process it is compared with
        common["shared_prefix"] = False
    one, two = tmp_path / "one", tmp_path / "two"
    run_worker(one, tiny_model_dir, grad_accum_steps=2, **common)
    run_worker(two, tiny_model_dir, processes=2, grad_accum_steps=1, **common)
    # every step's loss, gradient norm and metrics gather both processes' pairs
    for a, b in zip(
        metrics(run_config(one, tiny_model_dir)),
        metrics(run_config(two, tiny_model_dir)),
        strict=True,
    ):
        for key in ("train_loss", "grad_norm", "reward_margin", "chosen_logp"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)
    adapter = Path("runs") / "t" / "adapter" / "adapter_model.safetensors"
    a, b = load_file(one / adapter), load_file(two / adapter)
    assert a.keys() == b.keys()
    for name in a:  # Adam magnifies rounding where a gradient is near zero
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)
