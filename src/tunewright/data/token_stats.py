"""Token statistics with the model's own tokenizer and chat template.

Each example that preparation selects is encoded exactly as training will encode it
(`ChatTokenizer.encode_example`, or `encode_pair` for a preference pair): that both checks it against `data.max_seq_len` and counts its
tokens and its trained (unmasked) tokens. A chat over the limit is shortened when
`data.truncate` says so (`truncate.py`) and measured as shortened. Raw texts are counted
untruncated, plus the EOS token training appends, so a text that would be cut is reported instead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from tunewright.config import Truncation
from tunewright.data.quarantine import RowError
from tunewright.data.truncate import Cut, Truncator
from tunewright.dataset.example import Example
from tunewright.dataset.prepared import SPLITS
from tunewright.dataset.tokenize import ChatTokenizer, TooLongError

HISTOGRAM_BINS = 32


@dataclass(frozen=True, slots=True)
class Measured:
    """An example as training will see it: its tokens, its trained tokens and, when it was
    shortened to fit, how (None: whole)."""

    length: int
    trained: int
    cut: Cut | None = None


class TokenMeter:
    """Measures examples and keeps per-split lengths, trained-token and truncation counts."""

    def __init__(self, chat: ChatTokenizer, truncate: Truncation = "none") -> None:
        self.chat = chat
        self.truncate = truncate
        self.truncator = Truncator(chat, truncate) if truncate != "none" else None
        self.lengths: dict[str, list[int]] = defaultdict(list)
        self.trained: dict[str, int] = defaultdict(int)
        self.truncated: dict[str, int] = defaultdict(int)
        self.tokens_removed = 0

    def record(self, split: str, measured: Measured) -> None:
        """Count an example measured by `encode` under `split`."""
        self.lengths[split].append(measured.length)
        self.trained[split] += measured.trained
        if measured.cut is not None:
            self.truncated[split] += 1
            self.tokens_removed += measured.cut.tokens_removed

    def encode(self, example: Example) -> Measured:
        """The example measured, shortened first if it is over the token limit and
        `data.truncate` allows; raises RowError if it is (still) over the limit.

        A preference pair is measured as training encodes it (`encode_pair`): its length is the
        longer side's, its trained tokens both answers'. It is never shortened (cutting the
        shared prompt of two sides differently would change the comparison), so a side over
        the limit quarantines the pair, naming the side."""
        if example.is_preference:
            try:
                pair = self.chat.encode_pair(example)
            except TooLongError as e:
                raise RowError(str(e).split(": ", 1)[-1], "over the token limit") from None
            return Measured(
                max(len(pair.chosen.input_ids), len(pair.rejected.input_ids)),
                pair.chosen.num_trained_tokens + pair.rejected.num_trained_tokens,
            )
        if example.is_chat:
            try:
                encoded, cut = self.chat.encode_example(example), None
            except TooLongError as e:
                shortened = self.truncator.shorten(example, e.length) if self.truncator else None
                if shortened is None:
                    raise RowError(str(e).split(": ", 1)[-1], "over the token limit") from None
                cut, encoded = shortened
            return Measured(len(encoded.input_ids), encoded.num_trained_tokens, cut)
        tokenizer = self.chat.tokenizer
        length = len(tokenizer(example.text, add_special_tokens=False)["input_ids"])
        length += tokenizer.eos_token_id is not None
        if length > self.chat.max_seq_len:
            raise RowError(
                f"{length} tokens, over data.max_seq_len={self.chat.max_seq_len}",
                "over the token limit",
            )
        return Measured(length, length)

    def truncation(self) -> dict:
        """`data.truncate`, the examples shortened to fit (in all and per split) and the
        tokens that removed."""
        by_split = {split: self.truncated[split] for split in SPLITS}
        return {
            "mode": self.truncate,
            "examples": sum(by_split.values()),
            "by_split": by_split,
            "tokens_removed": self.tokens_removed,
        }

    def summary(self) -> dict:
        """Per split: examples, tokens, trained tokens, mean/median/p95/max length; and one
        length histogram over all splits."""
        per_split = {}
        for split, lengths in self.lengths.items():
            values = np.asarray(lengths)
            per_split[split] = {
                "examples": len(values),
                "tokens": int(values.sum()),
                "trained_tokens": self.trained[split],
                "mean_length": round(float(values.mean()), 1) if len(values) else 0,
                "median_length": int(np.median(values)) if len(values) else 0,
                "p95_length": int(np.percentile(values, 95)) if len(values) else 0,
                "max_length": int(values.max()) if len(values) else 0,
            }
        everything = np.concatenate(
            [np.asarray(v, dtype=np.int64) for v in self.lengths.values()] or [np.zeros(0)]
        )
        counts, edges = np.histogram(
            everything, bins=HISTOGRAM_BINS, range=(0, self.chat.max_seq_len)
        )
        return {
            "max_seq_len": self.chat.max_seq_len,
            "splits": per_split,
            "histogram": {
                "bin_edges": [round(float(e), 1) for e in edges],
                "counts": counts.tolist(),
            },
        }
