"""Splits: sizes, determinism, stratification, groups that never straddle, rejected rows replaced."""

from __future__ import annotations

from collections import Counter

import pytest

from tunewright.config import DataConfig
from tunewright.data.example import Example, Message
from tunewright.data.split import split_ids


def examples(n: int, labels: int = 4, groups: int = 0) -> list[Example]:
    return [
        Example(
            messages=(Message("user", f"q{i}"), Message("assistant", f"l{i % labels}")),
            label=f"l{i % labels}",
            source=f"f:{i}",
            meta={"group": f"g{i % groups}"} if groups else {},
        )
        for i in range(n)
    ]


def always(i: int, split: str) -> bool:
    return True


def test_random_split_sizes_follow_the_fractions_and_caps():
    data = examples(1000)
    dc = DataConfig(val_fraction=0.1, test_fraction=0.2)
    ids = split_ids(data, list(range(1000)), [], dc, always)
    assert (len(ids.test), len(ids.val), len(ids.train)) == (200, 80, 720)
    capped = split_ids(data, list(range(800)), list(range(800, 1000)), DataConfig(
        max_train_examples=300, val_fraction=0.03, max_test_examples=50), always)
    assert (len(capped.train), len(capped.val), len(capped.test)) == (300, 9, 50)
    assert set(capped.test) <= set(range(800, 1000))
    assert not set(capped.train) & set(capped.val)


def test_split_is_deterministic_by_seed():
    data = examples(200)
    first = split_ids(data, list(range(200)), [], DataConfig(seed=3), always)
    again = split_ids(data, list(range(200)), [], DataConfig(seed=3), always)
    other = split_ids(data, list(range(200)), [], DataConfig(seed=4), always)
    assert first == again and first != other


def test_stratified_split_keeps_each_labels_share():
    data = examples(400, labels=4)
    ids = split_ids(data, list(range(400)), [], DataConfig(split="stratified", test_fraction=0.2), always)
    assert Counter(data[i].label for i in ids.test) == {f"l{k}": 20 for k in range(4)}


def test_stratified_split_needs_labels():
    data = [Example(text="raw", source="f:1")]
    with pytest.raises(Exception, match="needs text\\+label data"):
        split_ids(data, [0], [], DataConfig(split="stratified"), always)


def test_groups_never_straddle_splits():
    data = examples(300, groups=30)
    dc = DataConfig(split="group", group_by="doc", val_fraction=0.1, test_fraction=0.2)
    ids = split_ids(data, list(range(300)), [], dc, always)
    split_of_group: dict[str, set[str]] = {}
    for name in ("train", "val", "test"):
        for i in getattr(ids, name):
            split_of_group.setdefault(data[i].meta["group"], set()).add(name)
    assert all(len(splits) == 1 for splits in split_of_group.values())
    assert len(ids.test) == 60 and len(ids.val) == 24


def test_rejected_examples_are_replaced_so_quotas_hold():
    data = examples(100)
    offered = []

    def every_third_is_too_long(i: int, split: str) -> bool:
        offered.append(i)
        return i % 3 != 0

    ids = split_ids(data, list(range(100)), [], DataConfig(max_train_examples=20, val_fraction=0.1,
                                                            test_fraction=0.1), every_third_is_too_long)  # fmt: skip
    assert (len(ids.train), len(ids.val), len(ids.test)) == (20, 2, 10)
    assert all(i % 3 for i in ids.train + ids.val + ids.test)
    assert len(offered) < 100  # rows never reached are not checked: they stay unused
