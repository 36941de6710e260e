"""Paired comparisons between model variants scored on the same examples.

Every variant is compared with the tuned model by a paired bootstrap of the headline metric and,
for right/wrong outcomes, McNemar's test. The verdict is about the *stronger* base variant: a
tuned model only earns "better" if it beats the best prompt we could give the base model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunewright.evaluate.metrics import encode_labels, macro_f1_from_codes
from tunewright.evaluate.stats import mcnemar, paired_bootstrap, paired_bootstrap_fn

# A free-text answer counts as "right" for the per-example outcome when its ROUGE-L reaches this:
# about half the reference's words in order. The continuous score is still what the test uses.
RIGHT_AT_ROUGE_L = 0.5

OUTCOMES = ("tuned_won", "tuned_lost", "both_right", "both_wrong")


def right_flags(task: str, per_example: Sequence[float]) -> list[bool]:
    """Whether each answer was right: exact label for classification, ROUGE-L >= 0.5 otherwise."""
    threshold = 1.0 if task == "classification" else RIGHT_AT_ROUGE_L
    return [score >= threshold for score in per_example]


def paired_comparison(
    task: str,
    metric: str,
    baseline: Sequence[float],
    candidate: Sequence[float],
    baseline_right: Sequence[bool],
    candidate_right: Sequence[bool],
) -> dict:
    """Candidate minus baseline on the same examples: delta, its 95% interval and p-values.

    `p_value` is the one the report quotes: McNemar's for classification (exact for few
    disagreements), the paired bootstrap's for continuous scores.
    """
    paired = paired_bootstrap(np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float))
    out = {
        "metric": metric,
        "delta": paired.delta,
        "low": paired.low,
        "high": paired.high,
        "p_value_bootstrap": paired.p_value,
        "p_value": paired.p_value,
    }
    test = mcnemar(np.asarray(baseline_right, dtype=bool), np.asarray(candidate_right, dtype=bool))
    out |= {"candidate_right_baseline_wrong": test.c, "baseline_right_candidate_wrong": test.b}
    if task == "classification":
        out |= {"mcnemar_p_value": test.p_value, "p_value": test.p_value}
    return out


def paired_macro_f1(
    baseline_preds: Sequence[str | None],
    candidate_preds: Sequence[str | None],
    refs: Sequence[str],
    labels: Sequence[str],
) -> dict:
    """Candidate minus baseline macro-F1 on the same examples: delta, 95% interval, bootstrap p.

    Macro-F1 is not a mean over examples, so each resample recomputes both models' macro-F1 on
    the same resampled examples. Where one label dominates, this is the test that says whether
    tuning learned the rare labels, which an accuracy gain can hide."""
    base_codes, ref_codes = encode_labels(baseline_preds, refs, labels)
    cand_codes, _ = encode_labels(candidate_preds, refs, labels)
    k = len(labels)
    paired = paired_bootstrap_fn(
        len(refs),
        lambda i: (
            macro_f1_from_codes(cand_codes[i], ref_codes[i], k)
            - macro_f1_from_codes(base_codes[i], ref_codes[i], k)
        ),
    )
    return {
        "delta": paired.delta,
        "low": paired.low,
        "high": paired.high,
        "p_value": paired.p_value,
    }


def strongest(values: dict[str, float]) -> str | None:
    """The name with the highest value (first one on ties), or None when there is none."""
    return max(values, key=values.__getitem__) if values else None


def outcomes(tuned_right: Sequence[bool], base_right: Sequence[bool]) -> list[str]:
    """Per example: tuned_won, tuned_lost, both_right or both_wrong against one base variant."""
    table = {
        (True, False): "tuned_won",
        (False, True): "tuned_lost",
        (True, True): "both_right",
        (False, False): "both_wrong",
    }
    return [table[(bool(t), bool(b))] for t, b in zip(tuned_right, base_right, strict=True)]


def significance_sentence(delta: float, p_value: float, *, unit: str = "pts") -> str:
    """'no significant difference (p = ...)' or 'better/worse by X pts (p = ...)'."""
    if p_value >= 0.05 or delta == 0:
        return f"no significant difference (p = {p_value:.2g})"
    direction = "better" if delta > 0 else "worse"
    return f"{direction} by {abs(delta) * 100:.1f} {unit} (p = {p_value:.2g})"
