"""Class weights for labelled data (`train.label_weighting`).

When one label dominates (65% of finance tweets are neutral), the loss is mostly about that label
and a short training run learns it first: the minority labels' recall lags, and macro-F1 with it.
Weighting each example's trained tokens by its label's weight gives every label an equal share
(`balanced`: weight ∝ 1/count, as scikit-learn's class_weight="balanced") or a share between
equal and natural (`sqrt`: ∝ 1/sqrt(count), the milder usual compromise between accuracy and
macro-F1). A step's loss is still divided by its tokens' unweighted count (train/steps.py), so
a label's weight holds even in a micro-batch of that label alone; the weights are scaled so the
mean example weighs 1, and the learning rate keeps its meaning. Examples without a label (and
general replay) weigh 1. Validation loss is left unweighted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from tunewright.config import LabelWeighting
from tunewright.dataset.tokenize import IGNORE_INDEX, TokenizedExample

_POWER = {"balanced": 1.0, "sqrt": 0.5}


def label_weights(labels: list[str | None], mode: LabelWeighting) -> dict[str, float]:
    """Weight per label, scaled so that the labelled examples' mean weight is 1; {} for 'none'
    or when there are fewer than two labels."""
    counts = Counter(label for label in labels if label is not None)
    if mode == "none" or len(counts) < 2:
        return {}
    raw = {label: count ** -_POWER[mode] for label, count in counts.items()}
    mean = sum(raw[label] * count for label, count in counts.items()) / sum(counts.values())
    return {label: w / mean for label, w in raw.items()}


def reweighted(example: TokenizedExample, weight: float) -> TokenizedExample:
    """`example` with every trained token's loss weight multiplied by `weight`."""
    if weight == 1.0:
        return example
    base = example.loss_weights or [0.0 if t == IGNORE_INDEX else 1.0 for t in example.labels]
    return replace(example, loss_weights=[w * weight for w in base])
