"""Evaluation on held-out preference pairs: log-prob margins equal a plain forward pass, a model
fine-tuned on the chosen answers ranks them first more often than the base, with intervals and a
paired test in results.json and the reports; a split without pairs is unaffected."""

import csv
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from tunewright.config import RunConfig
from tunewright.dataset.example import Example, Message
from tunewright.dataset.prepared import PreparedDataset
from tunewright.dataset.tokenize import IGNORE_INDEX, ChatTokenizer
from tunewright.evaluate import logprobs
from tunewright.evaluate.preference import (
    PairScore,
    compare_pairs,
    pair_example,
    pair_metrics,
    score_pairs,
    win_scores,
)
from tunewright.evaluate.prompts import Variant
from tunewright.evaluate.report import summary_table, verdict, write_reports
from tunewright.evaluate.runner import evaluate
from tunewright.models import load_model

FIXTURES = Path(__file__).parents[1] / "fixtures"
SYSTEM = "Name the intent."


def _pairs(n: int = 12) -> list[Example]:
    """Intent questions with the right intent as chosen and the next intent (sorted) as rejected."""
    with (FIXTURES / "intents_train.csv").open() as f:
        rows = list(csv.DictReader(f))
    intents = sorted({r["category"] for r in rows})
    return [
        Example(
            messages=(Message("user", r["text"]), Message("assistant", r["category"])),
            rejected=intents[(intents.index(r["category"]) + 1) % len(intents)],
            source=f"intents_train.csv:{i + 2}",
        )
        for i, r in enumerate(rows[:n])
    ]


def _plain(examples: list[Example]) -> list[Example]:
    return [Example(messages=e.messages, label=e.reference, source=e.source) for e in examples]


def _config(model_dir: Path, output_dir: Path, name: str, **evaluate_) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": name,
            "output_dir": str(output_dir),
            "model": {"name": str(model_dir)},
            "data": {"train_files": ["unused.csv"], "system_prompt": SYSTEM, "max_seq_len": 96},
            "train": {"precision": "fp32"},
            "evaluate": {"task": "generation", "max_new_tokens": 6, "batch_size": 5, **evaluate_},
        }
    )


def _tuned_on_chosen(model_dir: Path, folder: Path, examples: list[Example]) -> Path:
    """A LoRA adapter fitted to the chosen answers (plain cross-entropy, a few dozen steps): a
    model that should rank its own training answers first."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    loaded = load_model(str(model_dir))
    model = get_peft_model(loaded.model, LoraConfig(r=8, target_modules="all-linear"))
    chat = ChatTokenizer(loaded.tokenizer, SYSTEM, 96)
    encoded = [chat.encode_example(e) for e in examples]
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in encoded])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in encoded])
    mask = (torch.arange(width) < torch.tensor([len(e.input_ids) for e in encoded])[:, None]).long()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(40):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def _manual_logprob(model, sequence) -> tuple[float, int]:
    """Summed log-prob of the labelled tokens by one unpadded forward pass, the textbook way."""
    ids = torch.tensor([sequence.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total, count = 0.0, 0
    for t in range(1, len(sequence.input_ids)):
        if sequence.labels[t] != IGNORE_INDEX:
            total += logp[t - 1, sequence.labels[t]].item()
            count += 1
    return total, count


@pytest.mark.parametrize("max_logits", [logprobs.MAX_LOGIT_ENTRIES, 1])
def test_pair_logprobs_equal_a_plain_forward_pass(tiny_model_dir, monkeypatch, max_logits):
    # max_logits=1: every batch split down to one row, which must not change a single value
    monkeypatch.setattr(logprobs, "MAX_LOGIT_ENTRIES", max_logits)
    loaded = load_model(str(tiny_model_dir))
    variant = Variant("tuned", "tuned", "tuned", SYSTEM)
    pairs = _pairs(7)
    # answers of different lengths, so batches mix padding widths
    pairs[0] = Example(pairs[0].messages, rejected="card arrival exchange rate card arrival")
    scored = score_pairs(loaded.model, loaded.tokenizer, variant, pairs, batch_size=3)
    chat = ChatTokenizer(loaded.tokenizer, None, 96)
    for pair, score in zip(pairs, scored):
        encoded = chat.encode_pair(pair_example(variant, pair))
        chosen, chosen_tokens = _manual_logprob(loaded.model, encoded.chosen)
        rejected, rejected_tokens = _manual_logprob(loaded.model, encoded.rejected)
        assert (score.chosen_tokens, score.rejected_tokens) == (chosen_tokens, rejected_tokens)
        assert score.chosen == pytest.approx(chosen, rel=1e-4, abs=1e-4)
        assert score.rejected == pytest.approx(rejected, rel=1e-4, abs=1e-4)
        # only the final answer and its end-of-turn token count, not the prompt
        answer = loaded.tokenizer(pair.reference, add_special_tokens=False)["input_ids"]
        assert chosen_tokens == len(answer) + 1


def test_the_headline_is_per_token_because_sums_favour_the_short_answer():
    # a likely long chosen answer (-0.5 nats a token over 10 tokens) against an unlikely short one
    pairs = [PairScore(-5.0, -3.0, 10, 2)] * 3 + [PairScore(-1.0, -4.0, 2, 2)]
    metrics = pair_metrics(pairs)
    assert metrics["reward_accuracy"]["value"] == 1.0, "per token, chosen wins every pair"
    assert metrics["reward_accuracy_sum"]["value"] == 0.25, "the sum prefers the short answer"
    assert metrics["margin_sum"]["value"] == pytest.approx((3 * -2.0 + 3.0) / 4)
    assert metrics["margin_per_token"]["value"] == pytest.approx((3 * 1.0 + 1.5) / 4)
    for cell in metrics.values():
        assert cell["low"] <= cell["value"] <= cell["high"]


def test_win_scores_and_a_model_compared_with_itself():
    chosen = Example(
        (Message("user", "q"), Message("assistant", "card arrival")), rejected="top up"
    )
    assert win_scores(["card arrival", "top up", "", "card top"], [chosen] * 4) == [1, 0, 0.5, 0.5]
    pairs = [PairScore(-1.0, -2.0, 2, 2), PairScore(-3.0, -2.0, 2, 2)]
    same = compare_pairs(pairs, pairs, [1.0, 0.0], [1.0, 0.0])
    assert same["reward_accuracy"]["delta"] == 0 and same["reward_accuracy"]["p_value"] == 1
    assert same["implicit_reward_accuracy"]["value"] == 0, "equal margins are no reward"
    assert same["win_rate"]["delta"] == 0


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pref-runs")
    cfg = _config(tiny_model_dir, root, "pref", models=["base_0shot", "base_kshot", "tuned"])
    pairs = _pairs(20)
    trained = _tuned_on_chosen(tiny_model_dir, cfg.run_dir / "adapter", pairs)
    dataset = PreparedDataset(folder=root, train=pairs, val=[], test=pairs)
    return cfg, evaluate(cfg, dataset, trained), pairs


def test_every_language_model_ranks_the_pairs_and_tuned_prefers_chosen(evaluated):
    cfg, result, pairs = evaluated
    assert result.pair_rows == list(range(len(pairs)))
    tuned, base = result.models["tuned"], result.models["base_0shot"]
    # the k-shot variant generates (it has a win rate) but does not rank pairs
    assert result.models["base_kshot"].pairs is None
    assert "win_rate" in result.models["base_kshot"].metrics
    assert "reward_accuracy" not in result.models["base_kshot"].metrics
    for scores in (tuned, base):
        assert len(scores.pairs) == len(scores.wins) == len(pairs)
        margins = [p.margin_per_token for p in scores.pairs]
        assert scores.metrics["reward_accuracy"]["value"] == pytest.approx(
            sum(m > 0 for m in margins) / len(margins)
        )
        assert scores.metrics["margin_sum"]["value"] == pytest.approx(
            sum(p.margin for p in scores.pairs) / len(pairs)
        )
        for metric in ("reward_accuracy", "reward_accuracy_sum", "margin_per_token", "win_rate"):
            cell = scores.metrics[metric]
            assert cell["low"] <= cell["value"] <= cell["high"]
    # trained on the chosen answers: it ranks every one of them first, the random base does not
    assert tuned.metrics["reward_accuracy"]["value"] == 1.0
    assert base.metrics["reward_accuracy"]["value"] < 1.0
    assert result.preference_base == "base_0shot"
    c = result.comparisons["base_0shot"]["preference"]
    assert c["reward_accuracy"]["delta"] == pytest.approx(
        tuned.metrics["reward_accuracy"]["value"] - base.metrics["reward_accuracy"]["value"]
    )
    assert c["reward_accuracy"]["p_value"] == c["reward_accuracy"]["mcnemar_p_value"]
    assert c["implicit_reward_accuracy"]["value"] == pytest.approx(
        sum(t.margin > b.margin for t, b in zip(tuned.pairs, base.pairs)) / len(pairs)
    )
    assert "reward_accuracy" not in result.comparisons["base_kshot"]["preference"]


def test_results_and_examples_hold_the_pairs(evaluated):
    cfg, result, pairs = evaluated
    saved = json.loads((cfg.run_dir / "eval" / "results.json").read_text())
    assert saved["preference_pairs"] == len(pairs) and saved["preference_base"] == "base_0shot"
    assert saved["models"]["tuned"]["metrics"]["reward_accuracy"]["value"] == 1.0
    assert "implicit_reward_accuracy" in saved["comparisons"]["base_0shot"]["preference"]
    rows = [
        json.loads(x)
        for x in (cfg.run_dir / "eval" / "examples.jsonl").read_text().split("\n")
        if x
    ]
    for row, pair, score in zip(rows, pairs, result.models["tuned"].pairs):
        assert row["rejected"] == pair.rejected and row["reference"] == pair.reference
        assert row["tuned"]["chosen_logprob"] == score.chosen
        assert row["tuned"]["win"] in (0, 0.5, 1) and "chosen_logprob" not in row["base_kshot"]


def test_the_reports_have_the_preference_verdict_and_section(evaluated):
    cfg, result, pairs = evaluated
    sentence = verdict(result)
    assert "ranks the chosen answer above the rejected one more often than base_0shot" in sentence
    assert f"of {len(pairs)} held-out preference pairs" in sentence and "McNemar p" in sentence
    md, html = write_reports(result, cfg.run_dir)
    assert f"## Preference pairs ({len(pairs)} held out)" in md.read_text()
    text = html.read_text()
    assert "<h2>Preference pairs" in text and "implicit reward accuracy" in text
    console = Console(record=True, width=100)
    console.print(summary_table(result))
    table = console.export_text()
    assert "reward_accuracy" in table and "(win_rate)" in table and "margin_sum" in table


def test_the_forgetting_check_runs_for_a_preference_tuned_model(evaluated):
    _, result, _ = evaluated
    assert result.general is not None and result.general["sentence"]


def test_a_time_budget_ranks_the_same_sampled_pairs(evaluated, tiny_model_dir, tmp_path):
    cfg, full, pairs = evaluated
    budgeted = _config(
        tiny_model_dir,
        tmp_path,
        "budget",
        models=["base_0shot", "tuned"],
        max_minutes=1e-6,
        general_check=False,
    )
    dataset = PreparedDataset(folder=tmp_path, train=pairs, val=[], test=pairs)
    result = evaluate(budgeted, dataset, cfg.run_dir / "adapter")
    assert result.n_examples == 5 < len(pairs) and len(result.pair_rows) == 5
    by_source = {e.source: i for i, e in enumerate(pairs)}
    rows = [
        json.loads(x)
        for x in (budgeted.run_dir / "eval" / "examples.jsonl").read_text().split("\n")
        if x
    ]
    for name in ("base_0shot", "tuned"):
        got = result.models[name].pairs
        expected = [full.models[name].pairs[by_source[row["source"]]] for row in rows]
        assert [p.margin for p in got] == pytest.approx([p.margin for p in expected], abs=1e-4)


def test_a_split_without_pairs_is_unaffected(tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path, "plain", models=["base_0shot"], general_check=False)
    test = _plain(_pairs(4))
    result = evaluate(cfg, PreparedDataset(folder=tmp_path, train=test, val=[], test=test), None)
    scores = result.models["base_0shot"]
    assert result.pair_rows == [] and scores.pairs is None and scores.wins is None
    assert set(scores.metrics) == {"stop_rate", "rouge_l", "token_f1", "exact_match"}
    saved = json.loads((cfg.run_dir / "eval" / "results.json").read_text())
    assert saved["preference_pairs"] == 0
    md, html = write_reports(result, cfg.run_dir)
    assert "Preference pairs" not in md.read_text() and "Preference pairs" not in html.read_text()
    assert "preference pairs" not in verdict(result)


def test_pairs_longer_than_max_seq_len_are_still_ranked(tiny_model_dir, tmp_path):
    # the base's prompt (instruction, label list) may outgrow data.max_seq_len; generation has
    # no limit for it either, so ranking must not fail on it
    cfg = _config(tiny_model_dir, tmp_path, "long", models=["base_0shot"], general_check=False)
    cfg.data.max_seq_len = 16
    pairs = _pairs(3)
    result = evaluate(cfg, PreparedDataset(folder=tmp_path, train=pairs, val=[], test=pairs), None)
    assert len(result.models["base_0shot"].pairs) == 3
    assert result.preference_base is None, "no tuned model: nothing to compare"
    assert "preference pairs" not in verdict(result)
