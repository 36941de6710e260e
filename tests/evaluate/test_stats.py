"""Tests for tunewright.evaluate.stats: bootstrap intervals, paired bootstrap, McNemar."""

import math
from dataclasses import astuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewright.evaluate import stats
from tunewright.evaluate.metrics import encode_labels, macro_f1, macro_f1_from_codes
from tunewright.evaluate.stats import (
    Interval,
    bootstrap_ci,
    bootstrap_ci_fn,
    mcnemar,
    paired_bootstrap,
)

# 70% correct, in a fixed order.
SMALL = np.array([1.0] * 35 + [0.0] * 15)


def test_interval_contains_point() -> None:
    interval = bootstrap_ci(SMALL)
    assert interval.point == pytest.approx(0.7)
    assert interval.low < interval.point < interval.high


def test_interval_narrows_as_n_grows() -> None:
    small = bootstrap_ci(SMALL)
    large = bootstrap_ci(np.tile(SMALL, 100))
    assert large.point == pytest.approx(small.point)
    assert large.high - large.low < (small.high - small.low) / 5


def test_bootstrap_is_deterministic_by_seed() -> None:
    assert bootstrap_ci(SMALL, seed=3) == bootstrap_ci(SMALL, seed=3)
    assert bootstrap_ci(SMALL, seed=3) != bootstrap_ci(SMALL, seed=4)


def test_other_reductions() -> None:
    interval = bootstrap_ci(np.arange(101.0), statistic=np.median, n_resamples=500)
    assert interval.point == 50.0
    assert interval.low <= 50.0 <= interval.high


def test_blocking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = bootstrap_ci(SMALL, n_resamples=300)
    monkeypatch.setattr(stats, "_MAX_BLOCK_ENTRIES", 7 * len(SMALL))  # 7 resamples per block
    assert bootstrap_ci(SMALL, n_resamples=300) == whole


def test_fn_variant_uses_the_same_resamples() -> None:
    by_fn = bootstrap_ci_fn(len(SMALL), lambda idx: float(SMALL[idx].mean()))
    assert astuple(by_fn) == pytest.approx(astuple(bootstrap_ci(SMALL)))
    assert isinstance(by_fn, Interval)


def test_fn_variant_for_macro_f1() -> None:
    labels = ["a", "b", "c"]
    rng = np.random.default_rng(1)
    refs = [labels[i] for i in rng.integers(0, 3, size=300)]
    preds = [r if rng.random() < 0.8 else None for r in refs]
    pred_codes, ref_codes = encode_labels(preds, refs, labels)
    interval = bootstrap_ci_fn(
        len(refs),
        lambda idx: macro_f1_from_codes(pred_codes[idx], ref_codes[idx], len(labels)),
        n_resamples=500,
    )
    assert interval.point == pytest.approx(macro_f1(preds, refs, labels))
    assert interval.low < interval.point < interval.high


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(SMALL, confidence=1.5)
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([1.0, 0.0], [1.0])


def test_paired_bootstrap_clearly_better() -> None:
    rng = np.random.default_rng(0)
    base = (rng.random(500) < 0.5).astype(float)
    # The candidate fixes half of the base's errors and breaks nothing.
    tuned = np.where((base == 0) & (rng.random(500) < 0.5), 1.0, base)
    result = paired_bootstrap(base, tuned, n_resamples=2000, seed=0)
    assert result.delta == pytest.approx(tuned.mean() - base.mean())
    assert 0 < result.low < result.delta < result.high
    assert result.p_value < 0.01
    reverse = paired_bootstrap(tuned, base, n_resamples=2000, seed=0)
    assert reverse.delta == pytest.approx(-result.delta)
    assert reverse.p_value == result.p_value


def test_paired_bootstrap_identical_systems() -> None:
    scores = np.tile([1.0, 0.0, 1.0, 1.0], 50)
    result = paired_bootstrap(scores, scores, n_resamples=500, seed=0)
    assert (result.delta, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_tiny_difference_is_not_significant() -> None:
    # 200 examples; the systems disagree on all but the first, where both are right:
    # delta = 1/200, far inside the resampling noise.
    a = np.array([1.0, 0.0] * 100)
    b = 1.0 - a
    b[0] = 1.0
    result = paired_bootstrap(a, b, n_resamples=1000, seed=0)
    assert result.delta == pytest.approx(1 / 200)
    assert result.low < 0 < result.high
    assert result.p_value > 0.5


def test_mcnemar_exact_small_counts() -> None:
    # b = 2 (A right, B wrong), c = 8 (A wrong, B right), 5 ties; b + c = 10 < 25 -> exact.
    # Two-sided binomial p = 2 * P(X <= 2 | n=10, p=1/2) = 2 * (1 + 10 + 45) / 1024 = 112/1024.
    correct_a = [True] * 2 + [False] * 8 + [True] * 3 + [False] * 2
    correct_b = [False] * 2 + [True] * 8 + [True] * 3 + [False] * 2
    result = mcnemar(correct_a, correct_b)
    assert (result.b, result.c, result.statistic) == (2, 8, 2.0)
    assert result.p_value == pytest.approx(112 / 1024)


def test_mcnemar_chi_square_large_counts() -> None:
    # b = 10, c = 25; b + c = 35 >= 25 -> chi-square = (|10 - 25| - 1)^2 / 35 = 196/35 = 5.6.
    # With 1 degree of freedom the survival function is erfc(sqrt(x / 2)).
    correct_a = [True] * 10 + [False] * 25 + [True] * 40
    correct_b = [False] * 10 + [True] * 25 + [True] * 40
    result = mcnemar(correct_a, correct_b)
    assert (result.b, result.c) == (10, 25)
    assert result.statistic == pytest.approx(5.6)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(5.6 / 2)))


def test_mcnemar_without_disagreements() -> None:
    result = mcnemar([True, False], [True, False])
    assert (result.b, result.c, result.statistic, result.p_value) == (0, 0, 0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=1), min_size=1, max_size=200),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_interval_brackets_point_for_binary_scores(scores: list[int], seed: int) -> None:
    interval = bootstrap_ci(scores, n_resamples=500, seed=seed)
    assert interval.low <= interval.point <= interval.high
