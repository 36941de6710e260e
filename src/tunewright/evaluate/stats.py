"""Uncertainty and significance for "the tuned model beats the base".

Percentile bootstrap intervals for one system, a paired bootstrap for the difference between
two systems scored on the same examples, and McNemar's test for paired right/wrong outcomes.

The bootstrap is written here rather than taken from `scipy.stats.bootstrap` because we need
the paired bootstrap p-value (Koehn 2004: twice the share of paired resamples whose difference
does not keep the observed sign; a bootstrap test, not a sign-flip permutation test), the same
resample indices across metrics for a given seed, and resampling of non-decomposable metrics
such as macro-F1 through an index callback. The tests themselves (binomial, chi-square) come
from scipy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Interval",
    "McNemarResult",
    "PairedResult",
    "bootstrap_ci",
    "bootstrap_ci_fn",
    "mcnemar",
    "paired_bootstrap",
    "paired_bootstrap_fn",
]

# Resample-index matrices are generated in blocks of at most this many entries (~32 MB of
# int64), so 2000 resamples of a 50k-example test set do not need 800 MB at once.
_MAX_BLOCK_ENTRIES = 4_000_000
# Below this many discordant pairs the chi-square approximation is poor; use the exact test.
_MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True, slots=True)
class Interval:
    """A bootstrap confidence interval `[low, high]` around the full-sample `point` estimate."""

    low: float
    high: float
    point: float


@dataclass(frozen=True, slots=True)
class PairedResult:
    """Paired comparison of system B against system A on the same examples.

    `delta` is mean(B) - mean(A) (positive: B is better), `[low, high]` its bootstrap
    interval, and `p_value` the two-sided paired-bootstrap p-value.
    """

    delta: float
    low: float
    high: float
    p_value: float


@dataclass(frozen=True, slots=True)
class McNemarResult:
    """McNemar's test on paired right/wrong outcomes.

    `b` counts examples A got right and B got wrong, `c` the reverse. `statistic` is the
    continuity-corrected chi-square for b + c >= 25, else min(b, c) for the exact binomial test
    (the statsmodels convention).
    """

    b: int
    c: int
    statistic: float
    p_value: float


def _resample_blocks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield index matrices (rows = resamples) covering `n_resamples` draws of size `n`.

    Every bootstrap here draws from this one generator, so for a given seed each metric (and
    each system) sees the same resamples, which keeps intervals comparable across a report.
    """
    if n <= 0:
        raise ValueError("cannot bootstrap an empty sample")
    if n_resamples <= 0:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _MAX_BLOCK_ENTRIES // n)
    for start in range(0, n_resamples, rows_per_block):
        rows = min(rows_per_block, n_resamples - start)
        yield rng.integers(0, n, size=(rows, n))


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    per_example_scores: Sequence[float] | np.ndarray,
    statistic: Callable[..., Any] = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval for `statistic` of per-example scores.

    `statistic` must be a numpy-style reduction accepting `axis=` (np.mean, np.median, ...):
    it is applied to a whole block of resamples at once. For metrics that are not a reduction
    of per-example scores (macro-F1), use `bootstrap_ci_fn`. Deterministic given `seed`.
    """
    scores = np.asarray(per_example_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"per_example_scores must be 1-D, got shape {scores.shape}")
    samples = np.concatenate(
        [statistic(scores[idx], axis=1) for idx in _resample_blocks(len(scores), n_resamples, seed)]
    )
    low, high = _percentile_interval(samples, confidence)
    return Interval(low=low, high=high, point=float(statistic(scores)))


def bootstrap_ci_fn(
    n: int,
    fn: Callable[[np.ndarray], float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval for a metric computed from example indices.

    `fn(indices)` returns the metric on the examples at `indices` (with repeats); the point
    estimate is `fn(np.arange(n))`. Uses the same resamples as `bootstrap_ci` for equal `n`
    and `seed`. Example, with codes from `metrics.encode_labels`:
    `bootstrap_ci_fn(len(refs), lambda i: macro_f1_from_codes(preds[i], refs[i], k))`.
    """
    low, high = _percentile_interval(_per_resample(n, fn, n_resamples, seed), confidence)
    return Interval(low=low, high=high, point=float(fn(np.arange(n))))


def _per_resample(
    n: int, fn: Callable[[np.ndarray], float], n_resamples: int, seed: int
) -> np.ndarray:
    """`fn` of every resample's index row."""
    return np.fromiter(
        (fn(row) for idx in _resample_blocks(n, n_resamples, seed) for row in idx),
        dtype=np.float64,
        count=n_resamples,
    )


def paired_bootstrap(
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedResult:
    """Paired bootstrap of mean(B) - mean(A) over the same examples (A: baseline, B: candidate).

    Both systems are resampled with the same indices, so per-example difficulty cancels out.
    The two-sided p-value is twice the share of resamples whose delta has the opposite sign
    to the observed one (ties count as a flip), capped at 1; it is 1 when the observed delta is
    0. The share uses the (flips + 1) / (resamples + 1) Monte Carlo correction (Davison &
    Hinkley 1997), so a finite number of resamples never reports p = 0.
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores must be 1-D and equal length, got {a.shape} and {b.shape}")
    diff = b - a
    deltas = np.concatenate(
        [diff[idx].mean(axis=1) for idx in _resample_blocks(len(diff), n_resamples, seed)]
    )
    return _paired_result(float(diff.mean()), deltas, confidence)


def paired_bootstrap_fn(
    n: int,
    delta_fn: Callable[[np.ndarray], float],
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedResult:
    """`paired_bootstrap` for a metric that is not a mean of per-example scores (macro-F1):
    `delta_fn(indices)` is metric(B) - metric(A) on the examples at `indices`, both systems
    resampled with the same indices."""
    deltas = _per_resample(n, delta_fn, n_resamples, seed)
    return _paired_result(float(delta_fn(np.arange(n))), deltas, confidence)


def _paired_result(delta: float, deltas: np.ndarray, confidence: float) -> PairedResult:
    low, high = _percentile_interval(deltas, confidence)
    if delta == 0.0:
        p_value = 1.0
    else:
        flips = int(np.count_nonzero(deltas <= 0.0 if delta > 0.0 else deltas >= 0.0))
        p_value = min(1.0, 2.0 * (flips + 1) / (len(deltas) + 1))
    return PairedResult(delta=delta, low=low, high=high, p_value=p_value)


def mcnemar(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray
) -> McNemarResult:
    """McNemar's test of whether A and B differ in accuracy on the same examples.

    Only discordant pairs matter: b (A right, B wrong) and c (A wrong, B right). With
    b + c < 25 the exact two-sided binomial test is used, otherwise the continuity-corrected
    chi-square max(|b - c| - 1, 0)^2 / (b + c) with one degree of freedom.
    """
    # Imported here: scipy.stats takes over a second to import and only this test needs it.
    from scipy import stats as scipy_stats

    right_a = np.asarray(correct_a, dtype=bool)
    right_b = np.asarray(correct_b, dtype=bool)
    if right_a.shape != right_b.shape or right_a.ndim != 1:
        raise ValueError(
            f"outcomes must be 1-D and equal length, got {right_a.shape} and {right_b.shape}"
        )
    b = int(np.count_nonzero(right_a & ~right_b))
    c = int(np.count_nonzero(~right_a & right_b))
    discordant = b + c
    if discordant == 0:
        # The systems never disagree: no evidence of any difference.
        return McNemarResult(b=0, c=0, statistic=0.0, p_value=1.0)
    if discordant < _MCNEMAR_EXACT_BELOW:
        p_value = scipy_stats.binomtest(b, n=discordant, p=0.5).pvalue
        return McNemarResult(b=b, c=c, statistic=float(min(b, c)), p_value=float(p_value))
    # Clamped at 0: with b == c the uncorrected |b - c| - 1 would turn "no difference" into a
    # small positive statistic.
    statistic = max(abs(b - c) - 1, 0) ** 2 / discordant
    p_value = scipy_stats.chi2.sf(statistic, df=1)
    return McNemarResult(b=b, c=c, statistic=float(statistic), p_value=float(p_value))
