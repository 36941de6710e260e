"""Held-out preference pairs: does a model rank the chosen answer above the rejected one, and do
its own answers come closer to the chosen ones?

Ranking: each language model scores both answers of every pair by teacher forcing
(`logprobs.py`), the prompt as that model is asked it at evaluation. The headline,
`reward_accuracy`, is the share of pairs whose chosen answer has the higher *mean log-prob per
token*. Summed log-probs fall with every token, so a raw-sum comparison "prefers" whichever
answer is shorter whatever its content; when rejected answers are a model's own short drafts and
chosen ones long references (or the reverse), the sum measures length, not preference. The sum
is still reported (`reward_accuracy_sum`, `margin_sum`): it is what DPO optimises, and between
two models on the same pairs the lengths cancel, so tuned minus base summed margins is DPO's
implicit reward, beta * (log pi - log pi_ref), up to beta (`implicit_reward_accuracy`).

Win rate: the share of pairs where a model's generated answer is closer, by ROUGE-L, to the
chosen than to the rejected answer (a tie counts half). It costs nothing beyond the answers
evaluation generates anyway, and needs no judge; with `evaluate.judge` on, `judge_score` already
grades each answer against the chosen one (the reference), so no pairwise judge is added.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.evaluate.compare import paired_comparison
from tunewright.evaluate.logprobs import labelled_logprobs
from tunewright.evaluate.metrics import rouge_l
from tunewright.evaluate.prompts import Variant, variant_messages
from tunewright.evaluate.stats import bootstrap_ci

if TYPE_CHECKING:
    from tunewright.evaluate.runner import ModelScores

# The preference metrics the report shows as percentages.
RATE_METRICS = ("reward_accuracy", "reward_accuracy_sum", "win_rate")


@dataclass(frozen=True, slots=True)
class PairScore:
    """One model's log-probs (nats, end-of-turn token included) of both answers of a pair."""

    chosen: float
    rejected: float
    chosen_tokens: int
    rejected_tokens: int

    @property
    def margin(self) -> float:
        return self.chosen - self.rejected

    @property
    def margin_per_token(self) -> float:
        return self.chosen / self.chosen_tokens - self.rejected / self.rejected_tokens

    def to_json(self) -> dict:
        return {
            "chosen_logprob": self.chosen,
            "rejected_logprob": self.rejected,
            "chosen_tokens": self.chosen_tokens,
            "rejected_tokens": self.rejected_tokens,
        }


def scores_pairs(variant: Variant) -> bool:
    """Whether a variant ranks the pairs. k-shot variants do not: their shots make every prompt
    several times longer, twice per pair, to rank with the same weights as base_0shot."""
    return not variant.shots


def pair_example(variant: Variant, example: Example) -> Example:
    """A test pair with the prompt `variant` is asked (system prompt, instruction) before it."""
    messages = variant_messages(variant, example.prompt_messages)
    return Example(
        messages=(*messages, Message("assistant", example.reference)),
        source=example.source,
        rejected=example.rejected,
    )


def score_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    variant: Variant,
    examples: Sequence[Example],
    *,
    batch_size: int,
) -> list[PairScore]:
    """Log-probs of both answers of every pair, only the final answer's tokens counted (what
    `ChatTokenizer.encode_pair` labels); chosen and rejected sides share batches.

    No length limit applies: a variant's prompt (a base's instruction and label list) can be
    longer than `data.max_seq_len`, and generation answers these same prompts without one."""
    # variant_messages adds the system turn itself
    chat = ChatTokenizer(tokenizer, None, max_seq_len=sys.maxsize)
    pairs = [chat.encode_pair(pair_example(variant, e)) for e in examples]
    sums, counts = labelled_logprobs(
        model,
        tokenizer,
        [p.chosen for p in pairs] + [p.rejected for p in pairs],
        batch_size=batch_size,
    )
    n = len(pairs)
    return [
        PairScore(float(sums[i]), float(sums[n + i]), int(counts[i]), int(counts[n + i]))
        for i in range(n)
    ]


def rank_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    variant: Variant,
    examples: Sequence[Example],
    rows: Iterable[int],
    *,
    batch_size: int,
) -> dict[int, PairScore]:
    """`score_pairs` of the preference pairs among `examples[rows]`, by row ({} when the variant
    does not rank pairs or there are none among them)."""
    rows = [i for i in rows if examples[i].is_preference]
    if not rows or not scores_pairs(variant):
        return {}
    pairs = score_pairs(
        model,
        tokenizer,
        variant,
        [examples[i] for i in rows],
        batch_size=batch_size,
    )
    return dict(zip(rows, pairs, strict=True))


def add_pair_metrics(
    models: dict[str, ModelScores],
    variants: Sequence[Variant],
    scored: Sequence[Example],
    rows: Sequence[int],
    ranked: dict[str, dict[int, PairScore]],
) -> list[int]:
    """Gives every language model (`variants`) its win rate on the pairs among the `scored`
    examples (test rows `rows`), and those that ranked them (`ranked`, by test row) their pair
    metrics. Returns the indices into `scored` of the pairs ([] when there are none)."""
    pair_rows = [k for k, e in enumerate(scored) if e.is_preference]
    if not pair_rows:
        return []
    pairs = [scored[k] for k in pair_rows]
    for variant in variants:
        scores = models[variant.name]
        if ranked.get(variant.name):
            scores.pairs = [ranked[variant.name][rows[k]] for k in pair_rows]
            scores.metrics |= pair_metrics(scores.pairs)
        scores.wins = win_scores([scores.answers[k].text for k in pair_rows], pairs)
        scores.metrics |= win_metrics(scores.wins)
    return pair_rows


def prefers_chosen(pairs: Sequence[PairScore]) -> list[bool]:
    """The headline per pair: the chosen answer has the higher mean log-prob per token."""
    return [p.margin_per_token > 0 for p in pairs]


def _cell(values: Sequence[float]) -> dict[str, float]:
    iv = bootstrap_ci(np.asarray(values, dtype=float))
    return {"value": iv.point, "low": iv.low, "high": iv.high}


def pair_metrics(pairs: Sequence[PairScore]) -> dict[str, dict[str, float]]:
    """Reward accuracy (the headline, per token; and by sums) and mean margins (nats), with 95%
    bootstrap intervals over the pairs."""
    return {
        "reward_accuracy": _cell([float(r) for r in prefers_chosen(pairs)]),
        "reward_accuracy_sum": _cell([float(p.margin > 0) for p in pairs]),
        "margin_per_token": _cell([p.margin_per_token for p in pairs]),
        "margin_sum": _cell([p.margin for p in pairs]),
    }


def win_scores(answers: Sequence[str], examples: Sequence[Example]) -> list[float]:
    """Per pair: 1 when the answer's ROUGE-L against the chosen answer beats that against the
    rejected one, 0 when it loses, 0.5 on a tie (an empty answer ties at 0)."""
    scores = []
    for answer, example in zip(answers, examples, strict=True):
        to_chosen, to_rejected = (
            rouge_l(answer, example.reference),
            rouge_l(answer, example.rejected),
        )
        scores.append(1.0 if to_chosen > to_rejected else 0.0 if to_chosen < to_rejected else 0.5)
    return scores


def win_metrics(wins: Sequence[float]) -> dict[str, dict[str, float]]:
    return {"win_rate": _cell(wins)}


def compare_pairs(
    baseline: Sequence[PairScore] | None,
    candidate: Sequence[PairScore] | None,
    baseline_wins: Sequence[float],
    candidate_wins: Sequence[float],
) -> dict:
    """Candidate (tuned) minus baseline on the same pairs.

    `reward_accuracy`: delta, paired-bootstrap interval and McNemar's p (it is a right/wrong
    outcome per pair). `win_rate`: delta, interval and paired-bootstrap p. With both ranked,
    `implicit_reward_accuracy` is the share of pairs where the candidate's summed margin exceeds
    the baseline's: DPO's reward accuracy with the baseline as reference model, whatever beta.
    """
    out = {}
    if baseline is not None and candidate is not None:
        base_right, cand_right = prefers_chosen(baseline), prefers_chosen(candidate)
        out["reward_accuracy"] = paired_comparison(
            "classification",
            "reward_accuracy",
            [float(r) for r in base_right],
            [float(r) for r in cand_right],
            base_right,
            cand_right,
        )
        implicit = [c.margin - b.margin for b, c in zip(baseline, candidate, strict=True)]
        out["implicit_reward_accuracy"] = _cell([float(d > 0) for d in implicit])
        out["implicit_reward_margin"] = _cell(implicit)
    out["win_rate"] = paired_comparison(
        "generation",
        "win_rate",
        baseline_wins,
        candidate_wins,
        [w == 1.0 for w in baseline_wins],
        [w == 1.0 for w in candidate_wins],
    )
    return out
