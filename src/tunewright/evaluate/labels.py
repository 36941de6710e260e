"""Map free-text generations onto a closed label set (e.g. the 77 Banking77 intents).

A generated answer is scored in two tiers so reports can separate "the model said exactly a
label" (strict) from "the model said a label somewhere in a sentence" (lenient). An answer that
names no label is invalid (`LabelMatch.label is None`) and counts as wrong in every metric.

Written here rather than taken from a library: the matching rules are tiny, and they have to
stay identical between training-time eval and the final report, so we own them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LabelMatch", "LabelMatcher", "match_label", "normalize_label"]

# Characters models wrap answers in: straight and curly quotes, backticks, markdown bold.
_WRAPPERS = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb*"
_TRAILING_PUNCT = ".,;:!?"
# "_", "-" and any whitespace all separate words in a label name.
_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_label(text: str) -> str:
    """Canonical form of a label or answer: casefolded, words joined by single spaces.

    `_`, `-` and runs of whitespace are treated alike, and surrounding quotes, backticks,
    asterisks and trailing punctuation are removed, so `"Card arrival."` and `card_arrival`
    both become `card arrival`.
    """
    text = _SEPARATORS.sub(" ", text.casefold())
    # Loop because wrappers and punctuation nest in either order: `"card_arrival".` vs `"x."`.
    while True:
        stripped = text.strip().strip(_WRAPPERS).rstrip(_TRAILING_PUNCT)
        if stripped == text:
            return text
        text = stripped


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """Result of matching one answer: `label` is None when no label was found.

    `strict` is True only when the answer's first line is exactly a label (after
    normalisation); a lenient match found the label somewhere inside the answer.
    """

    label: str | None
    strict: bool


class LabelMatcher:
    """Precomputed matcher for one label set; reuse it across all answers of an eval run."""

    def __init__(self, labels: Sequence[str]) -> None:
        """Normalise `labels` once; raise ValueError on empty or colliding label names."""
        if not labels:
            raise ValueError("label set is empty: pass at least one label")
        self.labels: tuple[str, ...] = tuple(labels)
        self._by_normal: dict[str, str] = {}
        for label in self.labels:
            normal = normalize_label(label)
            if not normal:
                raise ValueError(f"label {label!r} is empty after normalisation")
            if normal in self._by_normal:
                raise ValueError(
                    f"labels {self._by_normal[normal]!r} and {label!r} both normalise to "
                    f"{normal!r}; they cannot be told apart in generated text"
                )
            self._by_normal[normal] = label
        # Longest first, so the first hit in the lenient scan is the most specific label:
        # `card payment wrong exchange rate` must win over `exchange rate`.
        ordered = sorted(self._by_normal.items(), key=lambda item: -len(item[0]))
        # Word boundaries stop `pin` matching inside `spinning`. Letters/digits are "word"
        # characters; `_` is not, but separators are already spaces after normalisation.
        self._lenient: list[tuple[str, re.Pattern[str], str]] = [
            (normal, re.compile(rf"(?<![^\W_]){re.escape(normal)}(?![^\W_])"), label)
            for normal, label in ordered
        ]

    def match(self, answer: str) -> LabelMatch:
        """Match one generated answer: strict on its first line, else lenient, else None."""
        stripped = answer.strip()
        first_line = stripped.split("\n", 1)[0]
        label = self._by_normal.get(normalize_label(first_line))
        if label is not None:
            return LabelMatch(label=label, strict=True)
        haystack = normalize_label(stripped)
        best: tuple[int, int, str] | None = None  # (length, position, label)
        for normal, pattern, label in self._lenient:
            if best is not None and len(normal) < best[0]:
                break  # sorted by length: nothing later can beat the current best
            # The substring test is a cheap prefilter; the regex only confirms word boundaries.
            if normal not in haystack:
                continue
            found = pattern.search(haystack)
            # Equal lengths: the label mentioned first in the answer wins.
            if found is not None and (best is None or found.start() < best[1]):
                best = (len(normal), found.start(), label)
        if best is None:
            return LabelMatch(label=None, strict=False)
        return LabelMatch(label=best[2], strict=False)

    def match_many(self, answers: Sequence[str]) -> list[LabelMatch]:
        """Match a batch of answers, in order."""
        return [self.match(answer) for answer in answers]


def match_label(answer: str, labels: Sequence[str]) -> LabelMatch:
    """Match one answer against `labels`; build a `LabelMatcher` instead when matching many."""
    return LabelMatcher(labels).match(answer)
