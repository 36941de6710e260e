"""Splits: sizes, determinism, stratification, groups that never straddle, rejected rows replaced."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tunewright.config import DataConfig
from tunewright.data.split import split_ids


def ids(*bounds: int) -> np.ndarray:
    return np.arange(*bounds, dtype=np.int64)


def labels_of(n: int, labels: int = 4) -> np.ndarray:
    return np.arange(n) % labels  # label code of example i (codes sort like the label names)


def always(i: int, split: str) -> bool:
    return True


def test_random_split_sizes_follow_the_fractions_and_caps():
    dc = DataConfig(val_fraction=0.1, test_fraction=0.2)
    split = split_ids(ids(1000), ids(0), dc, always)
    assert (len(split.test), len(split.val), len(split.train)) == (200, 80, 720)
    assert split == split_ids(ids(1000), ids(0), dc)  # accept=None takes the same ids at once
    capped = split_ids(
        ids(800),
        ids(800, 1000),
        DataConfig(max_train_examples=300, val_fraction=0.03, max_test_examples=50),
        always,
    )
    assert (len(capped.train), len(capped.val), len(capped.test)) == (300, 9, 50)
    assert set(capped.test) <= set(range(800, 1000))
    assert not set(capped.train) & set(capped.val)


def test_split_is_deterministic_by_seed():
    first = split_ids(ids(200), ids(0), DataConfig(seed=3), always)
    again = split_ids(ids(200), ids(0), DataConfig(seed=3), always)
    other = split_ids(ids(200), ids(0), DataConfig(seed=4), always)
    assert first == again and first != other


def test_stratified_split_keeps_each_labels_share():
    labels = labels_of(400)
    split = split_ids(
        ids(400), ids(0), DataConfig(split="stratified", test_fraction=0.2), always, labels=labels
    )
    assert Counter(labels[split.test].tolist()) == {k: 20 for k in range(4)}


def test_stratified_split_needs_labels():
    with pytest.raises(Exception, match="needs text\\+label data"):
        split_ids(ids(1), ids(0), DataConfig(split="stratified"), always, labels=np.array([-1]))


def test_groups_never_straddle_splits():
    groups = np.arange(300) % 30
    dc = DataConfig(split="group", group_by="doc", val_fraction=0.1, test_fraction=0.2)
    for accept in (always, None):
        split = split_ids(ids(300), ids(0), dc, accept, groups=groups)
        split_of_group: dict[int, set[str]] = {}
        for name in ("train", "val", "test"):
            for i in getattr(split, name):
                split_of_group.setdefault(int(groups[i]), set()).add(name)
        assert all(len(splits) == 1 for splits in split_of_group.values())
        assert len(split.test) == 60 and len(split.val) == 24


def test_rejected_examples_are_replaced_so_quotas_hold():
    offered = []

    def every_third_is_too_long(i: int, split: str) -> bool:
        offered.append(i)
        return i % 3 != 0

    split = split_ids(ids(100), ids(0), DataConfig(max_train_examples=20, val_fraction=0.1, test_fraction=0.1),
                      every_third_is_too_long)  # fmt: skip
    assert (len(split.train), len(split.val), len(split.test)) == (20, 2, 10)
    assert all(i % 3 for i in [*split.train, *split.val, *split.test])
    assert len(offered) < 100  # rows never reached are not checked: they stay unused
