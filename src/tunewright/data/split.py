"""Split examples into train / validation / test, deterministically from `data.seed`.

Examples are first put in an order, as a sequence of *units*:
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

Only example ids and, per id, a label code or group code are needed (numpy arrays, a few bytes
an example), never the examples: preparation streams them and splits a million rows in memory
it can spare. With `accept=None` every example is accepted and whole stretches are taken at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tunewright.config import DataConfig
from tunewright.errors import DataError

Accept = Callable[[int, str], bool]  # (example id, split name) -> usable


@dataclass
class SplitIds:
    train: np.ndarray  # example ids, int64, in the order they were taken
    val: np.ndarray
    test: np.ndarray

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SplitIds) and all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("train", "val", "test")
        )


@dataclass
class Units:
    """Example ids in the order splits take them; unit k is `order[starts[k]:starts[k + 1]]`,
    or every id is its own unit when `starts` is None."""

    order: np.ndarray
    starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.order)


class _Stream:
    def __init__(self, units: Units) -> None:
        self.units = units
        self.position = 0  # in `units.order`: examples before it were offered or skipped

    @property
    def consumed(self) -> int:
        return self.position

    def take(self, quota: float, split: str, accept: Accept | None) -> np.ndarray:
        order, starts = self.units.order, self.units.starts
        if starts is None and accept is None:  # every id its own unit, all accepted: a slice
            n = int(min(quota, len(order) - self.position))
            taken = order[self.position : self.position + n]
            self.position += n
            return taken
        taken: list[int] = []
        while len(taken) < quota and self.position < len(order):
            if starts is None:
                unit_end = self.position + 1
            else:  # the next unit starts at the first start after the position
                k = int(np.searchsorted(starts, self.position, side="right"))
                unit_end = int(starts[k]) if k < len(starts) else len(order)
            for i in order[self.position : unit_end].tolist():
                if len(taken) >= quota:
                    break  # the rest of this group stays unused
                if accept is None or accept(i, split):
                    taken.append(i)
            self.position = unit_end
        return np.asarray(taken, np.int64)


def order_units(
    ids: np.ndarray,
    how: str,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> Units:
    """`ids` as units in the order splits take them (see the module docstring).

    `labels[i]` is example i's label code, ranked so that sorting codes sorts the label names
    (-1: no label); `groups[i]` its group code. Only the one the split kind needs is read.
    """
    ids = np.asarray(ids, np.int64)
    if how == "group":
        if groups is None:
            raise DataError(
                "data.split is 'group' but no group values were collected; set data.group_by"
            )
        codes = groups[ids]
        distinct, group_of = np.unique(codes, return_inverse=True)
        rank = rng.permutation(len(distinct))[group_of]  # each group's place in the shuffle
        order = np.lexsort((ids, rank))
        ranked = rank[order]
        starts = (
            np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
            if len(ids)
            else ranked
        )
        return Units(ids[order], starts)
    if how == "stratified":
        if labels is None or (len(ids) and labels[ids].min() < 0):
            missing = int(ids[labels[ids] < 0][0]) if labels is not None else int(ids[0])
            raise DataError(
                f"example {missing}: data.split is 'stratified' but this row has no label; "
                "stratifying needs text+label data (or use data.split: random)"
            )
        codes = labels[ids]
        members_of = [ids[codes == code] for code in np.unique(codes)]  # sorted: by label name
        keyed_ids, keys = [], []
        for members in members_of:
            keyed_ids.append(rng.permutation(members))
            keys.append((np.arange(len(members)) + rng.random(len(members))) / len(members))
        keyed = np.concatenate(keyed_ids) if keyed_ids else ids
        key = np.concatenate(keys) if keys else np.zeros(0)
        return Units(keyed[np.lexsort((keyed, key))])
    return Units(rng.permutation(ids))


def split_ids(
    pool: np.ndarray,
    held_out: np.ndarray,
    dc: DataConfig,
    accept: Accept | None = None,
    *,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> SplitIds:
    """Assign example ids to splits; `pool` are training rows, `held_out` rows of test files."""
    pool_units, held_units = order_streams(pool, held_out, dc, labels=labels, groups=groups)
    return take_splits(pool_units, held_units, dc, accept)


def order_streams(
    pool: np.ndarray,
    held_out: np.ndarray,
    dc: DataConfig,
    *,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> tuple[Units, Units]:
    """The take order of the training rows and of the held-out rows (seeded by `data.seed`)."""
    rng = np.random.default_rng(dc.seed)
    pool_units = order_units(pool, dc.split, rng, labels, groups)
    held_units = order_units(held_out, dc.split, rng, labels, groups)
    return pool_units, held_units


def take_splits(
    pool_units: Units, held_units: Units, dc: DataConfig, accept: Accept | None
) -> SplitIds:
    """Fill the test, validation and train quotas from the ordered streams."""
    stream = _Stream(pool_units)
    max_test = dc.max_test_examples or math.inf
    if len(held_units):
        test = _Stream(held_units).take(max_test, "test", accept)
    else:
        n_test = max(1, round(len(pool_units) * dc.test_fraction))
        test = stream.take(min(n_test, max_test), "test", accept)
    remaining = len(pool_units) - stream.consumed
    max_train = dc.max_train_examples
    if max_train is not None and remaining >= max_train + round(max_train * dc.val_fraction):
        n_val = round(max_train * dc.val_fraction)
    else:
        n_val = round(remaining * dc.val_fraction)
    val = stream.take(n_val, "val", accept)
    train = stream.take(max_train or math.inf, "train", accept)
    return SplitIds(train, val, test)
