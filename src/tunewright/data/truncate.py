"""Shorten over-long chat examples to fit `data.max_seq_len` by cutting the user's text
(`data.truncate`), instead of quarantining them.

The answer (assistant turns) and the system prompt are never cut: they are what training learns
and what evaluation compares against. Only user turns lose tokens, the longest first: every user
turn is capped at the same number of tokens, the largest cap with which the example fits, so one
long document loses only what it must and the short questions around it stay whole. Within a
turn, `input_end` keeps the start of the text, `input_start` its end, and `input_middle` both
ends, joined by " … " so that two passages far apart do not read as one sentence.

Cuts fall on the boundaries of the turn's own tokens, moved to the nearest word boundary inside
the kept text when one is close (`WORD_CHARS`); the shortened example is then tokenised
again with its chat template and the cap lowered until it fits, since re-tokenising can merge
differently at a cut and the marker costs tokens. An example that does not fit even with one
token left of each user turn (its answer and system prompt alone are too long) is not shortened:
it is quarantined as over the limit, as with `truncate: none`.

A cut is kept as character positions (`Cut`, a few integers an example) and applied again when
the splits are written, so preparation need not hold the shortened texts in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import get_args

from tunewright.config import Truncation
from tunewright.dataset.example import Example
from tunewright.dataset.tokenize import ChatTokenizer, TokenizedExample, TooLongError

MIDDLE_MARKER = " … "  # input_middle: between the kept start and end of a turn
WORD_CHARS = 24  # a cut inside a word moves back to its start if a space is this close


@dataclass(frozen=True, slots=True)
class Cut:
    """How an example was shortened: per cut user turn, `(message index, end of the kept start,
    start of the kept end)` in characters of its content; and the tokens that removed."""

    turns: tuple[tuple[int, int, int], ...]
    tokens_removed: int

    def apply(self, example: Example) -> Example:
        """The example with its user turns cut (it must be the example that was measured)."""
        messages = list(example.messages)
        for index, head_end, tail_start in self.turns:
            message = messages[index]
            messages[index] = replace(message, content=_join(message.content, head_end, tail_start))
        return replace(example, messages=tuple(messages))


def _join(content: str, head_end: int, tail_start: int) -> str:
    head, tail = content[:head_end].rstrip(), content[tail_start:].lstrip()
    return head + MIDDLE_MARKER + tail if head and tail else head or tail


class Truncator:
    """Shortens the user turns of chat examples that are over the chat tokenizer's limit."""

    def __init__(self, chat: ChatTokenizer, side: Truncation) -> None:
        if side not in get_args(Truncation) or side == "none":
            raise ValueError(f"not a side to cut: {side!r}")
        self.chat = chat
        self.side = side

    def shorten(self, example: Example, length: int) -> tuple[Cut, TokenizedExample] | None:
        """The cut that makes `example` (of `length` tokens, over the limit) fit, and the
        shortened example tokenised; None when cutting user text cannot make it fit."""
        turns = [
            (i, self._offsets(m.content))
            for i, m in enumerate(example.messages)
            if m.role == "user"
        ]
        if not turns:
            return None
        cap = _cap([len(offsets) for _, offsets in turns], length - self.chat.max_seq_len)
        while cap >= 1:
            cut = tuple(
                self._cut(i, example.messages[i].content, offsets, cap)
                for i, offsets in turns
                if len(offsets) > cap
            )
            shortened = Cut(cut, 0).apply(example)
            if any(not m.content for m in shortened.messages):
                return None  # all that was left of a turn was whitespace
            try:
                encoded = self.chat.encode_example(shortened)
            except TooLongError as e:
                over = e.length - self.chat.max_seq_len
                cap -= max(1, -(-over // max(1, len(cut))))  # spread the rest over the cut turns
                continue
            return Cut(cut, length - len(encoded.input_ids)), encoded
        return None

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return self.chat.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]

    def _cut(
        self, index: int, content: str, offsets: list[tuple[int, int]], keep: int
    ) -> tuple[int, int, int]:
        """`(index, head end, tail start)` keeping `keep` of the turn's tokens on `self.side`."""
        n = len(offsets)
        if self.side == "input_end":
            return index, _word_end(content, offsets[keep - 1][1]), len(content)
        if self.side == "input_start":
            return index, 0, _word_start(content, offsets[n - keep][0])
        head = (keep + 1) // 2
        tail = keep - head
        tail_start = _word_start(content, offsets[n - tail][0]) if tail else len(content)
        return index, _word_end(content, offsets[head - 1][1]), tail_start


def _word_end(content: str, at: int) -> int:
    """`at`, or the start of the space before the word it cuts, if that is close."""
    if not 0 < at < len(content) or content[at].isspace() or content[at - 1].isspace():
        return at
    for k in range(at - 1, max(0, at - WORD_CHARS), -1):
        if content[k].isspace():
            return k
    return at


def _word_start(content: str, at: int) -> int:
    """`at`, or the end of the space after the word it cuts, if that is close."""
    if not 0 < at < len(content) or content[at - 1].isspace() or content[at].isspace():
        return at
    for k in range(at, min(len(content) - 1, at + WORD_CHARS)):
        if content[k].isspace():
            return k + 1
    return at


def _cap(sizes: list[int], excess: int) -> int:
    """The largest per-turn token cap that removes at least `excess` tokens from turns of
    `sizes` tokens (0 when even removing them all is not enough)."""

    def removed(cap: int) -> int:
        return sum(max(0, size - cap) for size in sizes)

    low, high = 0, max(sizes)
    while low < high:
        mid = (low + high + 1) // 2
        if removed(mid) >= excess:
            low = mid
        else:
            high = mid - 1
    return low if removed(low) >= excess else 0
