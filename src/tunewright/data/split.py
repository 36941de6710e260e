"""Split examples into train / validation / test, deterministically from `data.seed`.

Examples are first put in an order, as a list of *units*:
- `random`: every example its own unit, shuffled;
- `stratified`: the k-th of a label's n examples (shuffled within the label) sorts at
  (k + u) / n, u uniform in [0, 1): every stretch of this order holds each label in about its
  overall share, so consecutive stretches are stratified splits;
- `group`: one unit per `data.group_by` value, units shuffled; a group never straddles splits.

Then each split takes units from the front of its stream until its quota is met: test first
(from the test files, or cut from the training rows), then validation, then train. Every
example is offered to `accept` before it is taken (preparation checks its token length there),
so a rejected example is replaced by the next one and the quotas are still met. When a group
does not fit the rest of a quota, its remaining examples are left unused rather than spilled
into the next split. Examples never reached are unused ("not used after sampling").
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from tunewright.config import DataConfig
from tunewright.data.example import Example
from tunewright.errors import DataError

Accept = Callable[[int, str], bool]  # (example id, split name) -> usable


@dataclass
class SplitIds:
    train: list[int]
    val: list[int]
    test: list[int]


class _Stream:
    def __init__(self, units: list[list[int]]) -> None:
        self.units = units
        self.next_unit = 0
        self.consumed = 0  # examples in units already taken from

    def take(self, quota: float, split: str, accept: Accept) -> list[int]:
        taken: list[int] = []
        while len(taken) < quota and self.next_unit < len(self.units):
            unit = self.units[self.next_unit]
            self.next_unit += 1
            self.consumed += len(unit)
            for i in unit:
                if len(taken) >= quota:
                    break  # the rest of this group stays unused
                if accept(i, split):
                    taken.append(i)
        return taken


def order_units(examples: list[Example], ids: list[int], how: str, rng: random.Random) -> list[list[int]]:
    """`ids` as a list of units in the order splits take them (see the module docstring)."""
    if how == "group":
        groups: dict[str, list[int]] = {}
        for i in ids:
            groups.setdefault(examples[i].meta["group"], []).append(i)
        units = list(groups.values())
        rng.shuffle(units)
        return units
    if how == "stratified":
        by_label: dict[str, list[int]] = {}
        for i in ids:
            label = examples[i].label
            if label is None:
                raise DataError(
                    f"{examples[i].source}: data.split is 'stratified' but this row has no label; "
                    "stratifying needs text+label data (or use data.split: random)"
                )
            by_label.setdefault(label, []).append(i)
        keyed = []
        for label in sorted(by_label):
            members = by_label[label]
            rng.shuffle(members)
            keyed += [((k + rng.random()) / len(members), i) for k, i in enumerate(members)]
        keyed.sort()
        return [[i] for _, i in keyed]
    shuffled = list(ids)
    rng.shuffle(shuffled)
    return [[i] for i in shuffled]


def split_ids(
    examples: list[Example], pool: list[int], held_out: list[int], dc: DataConfig, accept: Accept
) -> SplitIds:
    """Assign example ids to splits; `pool` are training rows, `held_out` rows of test files."""
    rng = random.Random(dc.seed)
    stream = _Stream(order_units(examples, pool, dc.split, rng))
    max_test = dc.max_test_examples or math.inf
    if held_out:
        test = _Stream(order_units(examples, held_out, dc.split, rng)).take(max_test, "test", accept)
    else:
        n_test = max(1, round(len(pool) * dc.test_fraction))
        test = stream.take(min(n_test, max_test), "test", accept)
    remaining = len(pool) - stream.consumed
    max_train = dc.max_train_examples
    if max_train is not None and remaining >= max_train + round(max_train * dc.val_fraction):
        n_val = round(max_train * dc.val_fraction)
    else:
        n_val = round(remaining * dc.val_fraction)
    val = stream.take(n_val, "val", accept)
    train = stream.take(max_train or math.inf, "train", accept)
    return SplitIds(train, val, test)
