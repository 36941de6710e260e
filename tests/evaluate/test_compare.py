"""Paired comparisons, right/wrong flags and per-example outcomes."""

import pytest

from tunewright.evaluate.compare import (
    outcomes,
    paired_comparison,
    paired_macro_f1,
    right_flags,
    significance_sentence,
    strongest,
)


def test_right_flags_by_task():
    assert right_flags("classification", [1.0, 0.0]) == [True, False]
    assert right_flags("generation", [0.5, 0.49, 1.0]) == [True, False, True]


def test_outcomes_cover_all_four_cases():
    got = outcomes([True, False, True, False], [False, True, True, False])
    assert got == ["tuned_won", "tuned_lost", "both_right", "both_wrong"]


def test_classification_comparison_quotes_mcnemar():
    base = [1.0] * 10 + [0.0] * 30
    tuned = [1.0] * 40
    c = paired_comparison(
        "classification", "accuracy", base, tuned, [b == 1 for b in base], [True] * 40
    )
    assert c["delta"] == pytest.approx(0.75) and c["low"] <= c["delta"] <= c["high"]
    assert c["p_value"] == c["mcnemar_p_value"] < 0.001
    assert c["candidate_right_baseline_wrong"] == 30 and c["baseline_right_candidate_wrong"] == 0


def test_generation_comparison_quotes_the_bootstrap():
    base, tuned = [0.2, 0.4, 0.6, 0.1], [0.2, 0.4, 0.6, 0.1]
    c = paired_comparison(
        "generation",
        "rouge_l",
        base,
        tuned,
        right_flags("generation", base),
        right_flags("generation", tuned),
    )
    assert (
        c["delta"] == 0
        and c["p_value"] == c["p_value_bootstrap"] == 1.0
        and "mcnemar_p_value" not in c
    )


def test_macro_f1_comparison_against_hand_computed_values():
    refs = ["yes"] * 60 + ["no"] * 20 + ["maybe"] * 20
    base = ["yes"] * 100  # the majority label: F1 yes = 2*0.6/1.6 = 0.75, no = maybe = 0 -> 0.25
    # tuned: 20 of the yes questions called "no", every no and maybe right:
    # F1 yes = 2*1*(2/3)/(5/3) = 0.8, no = 2*0.5*1/1.5 = 2/3, maybe = 1 -> 0.8222
    tuned = ["yes"] * 40 + ["no"] * 20 + ["no"] * 20 + ["maybe"] * 20
    c = paired_macro_f1(base, tuned, refs, ["yes", "no", "maybe"])
    assert c["delta"] == pytest.approx((0.8 + 2 / 3 + 1) / 3 - 0.25)
    assert c["low"] <= c["delta"] <= c["high"] and c["low"] > 0 and c["p_value"] < 0.01
    same = paired_macro_f1(base, base, refs, ["yes", "no", "maybe"])
    assert same["delta"] == 0 and same["p_value"] == 1.0


def test_strongest_and_sentence():
    assert strongest({"base_0shot": 0.2, "base_kshot": 0.5}) == "base_kshot"
    assert strongest({}) is None
    assert significance_sentence(-0.12, 0.01) == "worse by 12.0 pts (p = 0.01)"
    assert significance_sentence(0.12, 0.2).startswith("no significant difference")
