"""Model-free metrics: classification scores over a label set, SQuAD-style text scores,
ROUGE-L, perplexity and stop rate.

Classification metrics take predictions that may be None (the generation named no label, see
`labels.py`); such a prediction, or any string outside the label set, is simply wrong. All
classification scores are computed from one confusion matrix, so accuracy, macro-F1 and the
per-label table can never disagree with each other.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

__all__ = [
    "accuracy",
    "confusion_matrix",
    "encode_labels",
    "exact_match",
    "macro_f1",
    "macro_f1_from_codes",
    "normalize_answer",
    "per_label_table",
    "perplexity",
    "rouge_l",
    "stop_rate",
    "token_f1",
]


def _check_lengths(preds: Sequence[Any], refs: Sequence[Any]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} references")
    if not refs:
        raise ValueError("no examples to score: predictions and references are empty")


# --- classification -------------------------------------------------------------------------


def encode_labels(
    preds: Sequence[str | None], refs: Sequence[str], labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Map predictions and references to integer codes `0..len(labels)-1`.

    Invalid predictions (None, or a string not in `labels`) get code `len(labels)`. A reference
    outside `labels` raises ValueError, since it means the label set and test set disagree.
    Use the codes with `macro_f1_from_codes` to bootstrap macro-F1 without re-encoding strings.
    """
    _check_lengths(preds, refs)
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError("labels contain duplicates")
    invalid = len(labels)
    pred_codes = np.fromiter(
        (index.get(p, invalid) if p is not None else invalid for p in preds),
        dtype=np.int64,
        count=len(preds),
    )
    unknown = sorted({r for r in refs if r not in index})
    if unknown:
        raise ValueError(f"references contain labels missing from the label set: {unknown[:5]}")
    ref_codes = np.fromiter((index[r] for r in refs), dtype=np.int64, count=len(refs))
    return pred_codes, ref_codes


def _confusion_from_codes(
    pred_codes: np.ndarray, ref_codes: np.ndarray, n_labels: int
) -> np.ndarray:
    # One bincount over the flattened (ref, pred) cell index: far faster than a Python loop.
    width = n_labels + 1
    counts = np.bincount(ref_codes * width + pred_codes, minlength=n_labels * width)
    return counts.reshape(n_labels, width)


def _f1_per_label(matrix: np.ndarray) -> np.ndarray:
    n_labels = matrix.shape[0]
    true_pos = np.diagonal(matrix).astype(np.float64)
    predicted = matrix[:, :n_labels].sum(axis=0)
    support = matrix.sum(axis=1)
    # F1 = 2TP / (predicted + support) equals 2PR/(P+R) and needs no guard for P+R = 0. A label
    # with neither support nor predictions gets NaN: it says nothing about the model, and
    # `macro_f1` leaves it out of the mean.
    denom = predicted + support
    return np.divide(2 * true_pos, denom, out=np.full(n_labels, np.nan), where=denom > 0)


def confusion_matrix(
    preds: Sequence[str | None], refs: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Counts of shape `(len(labels), len(labels) + 1)`: rows are references, columns
    predictions in `labels` order, and the last column counts invalid (None) predictions."""
    pred_codes, ref_codes = encode_labels(preds, refs, labels)
    return _confusion_from_codes(pred_codes, ref_codes, len(labels))


def accuracy(preds: Sequence[str | None], refs: Sequence[Any]) -> float:
    """Share of predictions equal to their reference; None is always wrong."""
    _check_lengths(preds, refs)
    return sum(p is not None and p == r for p, r in zip(preds, refs, strict=True)) / len(refs)


def macro_f1_from_codes(pred_codes: np.ndarray, ref_codes: np.ndarray, n_labels: int) -> float:
    """Macro-F1 from `encode_labels` codes; the fast path for bootstrap resampling."""
    return float(np.nanmean(_f1_per_label(_confusion_from_codes(pred_codes, ref_codes, n_labels))))


def macro_f1(preds: Sequence[str | None], refs: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over the labels of `labels` that occur in `refs` or are
    predicted (scikit-learn's default set when it is not given the labels).

    A label with examples that is never predicted right scores F1 0 and counts in the mean. A
    label with neither examples nor predictions is left out: counting it as 0 would make the
    score depend on which labels a test sample happens to hold, and bias every bootstrap resample
    that misses a rare label downwards (intervals that fall below the point estimate).
    """
    pred_codes, ref_codes = encode_labels(preds, refs, labels)
    return macro_f1_from_codes(pred_codes, ref_codes, len(labels))


def per_label_table(
    preds: Sequence[str | None], refs: Sequence[str], labels: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per label, in `labels` order: label, precision, recall, f1, support.

    Precision or recall with a zero denominator is reported as 0.0.
    """
    matrix = confusion_matrix(preds, refs, labels)
    n_labels = len(labels)
    true_pos = np.diagonal(matrix)
    predicted = matrix[:, :n_labels].sum(axis=0)
    support = matrix.sum(axis=1)
    f1 = _f1_per_label(matrix)
    return [
        {
            "label": label,
            "precision": float(true_pos[i] / predicted[i]) if predicted[i] else 0.0,
            "recall": float(true_pos[i] / support[i]) if support[i] else 0.0,
            "f1": 0.0 if np.isnan(f1[i]) else float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    ]


# --- free text (SQuAD-style) ----------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, collapse spaces.

    Kept identical to the official evaluation script so EM/F1 match published numbers.
    """
    text = text.lower().translate(_PUNCT_TABLE)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token-overlap F1 between prediction and reference (bag of tokens).

    If either side has no tokens after normalisation, the score is 1.0 only when both are empty
    (the SQuAD v2 convention for unanswerable questions).
    """
    pred_tokens = normalize_answer(pred).split()
    ref_tokens = normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer() -> RougeScorer:
    # Imported here because rouge_score pulls in nltk, which costs CLI start-up time for
    # commands that never score text. Built once: the stemmer setup is not free.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (longest common subsequence, Porter-stemmed) from `rouge_score`.

    Empty text on either side scores 0.0.
    """
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


# --- language modelling and generation ------------------------------------------------------


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), from a summed NLL in nats.

    Sum NLL and tokens over the whole set before calling this: averaging per-batch
    perplexities would weight short batches too heavily.
    """
    if total_tokens <= 0:
        raise ValueError(f"total_tokens must be positive, got {total_tokens}")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


def stop_rate(finished_with_eos: Sequence[bool]) -> float:
    """Share of generations that ended with EOS rather than hitting the token limit."""
    if not finished_with_eos:
        raise ValueError("no generations to score: finished_with_eos is empty")
    return sum(bool(f) for f in finished_with_eos) / len(finished_with_eos)
