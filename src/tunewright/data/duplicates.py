"""The deduplication stage: find exact and near-duplicate examples, remove them if asked, and
check finished splits for leakage.

Examples are compared on their text: the raw text, or every message's content in order (roles
and labels aside), then a preference pair's rejected answer. Held-out test rows are fed to the `Deduplicator` first, so when a training
row repeats a test row, the training row is the one removed, never the test row.

`data.dedup`: `report` finds clusters and removes nothing; `exact` removes exact duplicates
(same text after normalising case, spacing and edge punctuation); `near` also removes rows
whose word-set Jaccard similarity to a kept row is at least `data.dedup_threshold`.

Leakage is read off the same clusters: a validation or test example is leaked when its cluster
also has a training example. No second pass over the data is needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from tunewright.data.dedup import Deduplicator, Sketches
from tunewright.dataset.example import Example

DedupMode = Literal["off", "report", "exact", "near"]


def dedup_text(example: Example) -> str:
    """The text two examples are compared on."""
    if example.text is not None:
        return example.text
    text = "\n".join(m.content for m in example.messages)
    # A pair's rejected answer is part of it: two pairs that differ only there are two pairs.
    return text if example.rejected is None else f"{text}\n{example.rejected}"


@dataclass
class DedupResult:
    removed: set[int] = field(default_factory=set)  # example ids that leave the data
    found: Counter = field(default_factory=Counter)  # "exact"/"near" -> rows found
    clusters: list[list[int]] = field(default_factory=list)  # kept id first, then duplicates
    jaccard: dict[int, float] = field(default_factory=dict)  # duplicate id -> similarity
    sources: dict[int, str] = field(default_factory=dict)  # duplicate id -> its `file:line`


class DuplicateFinder:
    """Streaming deduplication of examples numbered 0, 1, 2, ... in the order they are given.

    Memory holds the `Deduplicator`'s compact per-text state and, per duplicate, its id,
    similarity and source; the examples themselves are not kept.
    """

    def __init__(self, mode: DedupMode, threshold: float) -> None:
        self.mode = mode
        self.result = DedupResult()
        self.deduplicator: Deduplicator[int] | None = (
            Deduplicator(threshold=threshold) if mode != "off" else None
        )
        self._next_id = 0

    def keep(
        self, count: int, sketches: Sketches | None, source_of: Callable[[int], str]
    ) -> list[bool]:
        """Number the next `count` examples and decide each: False if it leaves the data.

        `sketches` are the examples' `Deduplicator.sketch` (None when deduplication is off);
        `source_of(k)` is the `file:line` of the k-th.
        """
        first = self._next_id
        self._next_id += count
        keep = [True] * count
        if self.deduplicator is None or not count:
            return keep
        result, mode = self.result, self.mode
        for k, decision in enumerate(
            self.deduplicator.add_sketched(list(range(first, first + count)), sketches)
        ):
            if decision.kind == "keep":
                continue
            i = first + k
            result.found[decision.kind] += 1
            result.jaccard[i] = decision.jaccard
            result.sources[i] = source_of(k)
            if mode == "near" or (mode == "exact" and decision.kind == "exact"):
                result.removed.add(i)
                keep[k] = False
        return keep

    def finish(self) -> DedupResult:
        if self.deduplicator is not None:
            self.result.clusters = self.deduplicator.clusters()
        return self.result


def find_duplicates(examples: list[Example], mode: DedupMode, threshold: float) -> DedupResult:
    """Deduplicate `examples` in order (ids are list positions); the first occurrence wins."""
    finder = DuplicateFinder(mode, threshold)
    if finder.deduplicator is not None and examples:
        sketches = finder.deduplicator.sketch([dedup_text(e) for e in examples])
        finder.keep(len(examples), sketches, lambda k: examples[k].source)
    return finder.finish()


@dataclass(frozen=True)
class Leak:
    split: str  # "val" or "test"
    example: int  # id of the held-out example
    train_example: int  # id of a training example in its duplicate cluster


def find_leaks(clusters: list[list[int]], split_of: dict[int, str]) -> list[Leak]:
    """Validation/test examples that share a duplicate cluster with a training example."""
    leaks = []
    for cluster in clusters:
        in_train = [i for i in cluster if split_of.get(i) == "train"]
        if not in_train:
            continue
        for i in cluster:
            if split_of.get(i) in ("val", "test"):
                leaks.append(Leak(split_of[i], i, in_train[0]))
    return leaks
