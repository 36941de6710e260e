"""Token statistics with the model's own tokenizer and chat template.

Each example that preparation selects is encoded exactly as training will encode it
(`ChatTokenizer.encode_example`): that both checks it against `data.max_seq_len` and counts its
tokens and its trained (unmasked) tokens. Raw texts are counted untruncated, plus the EOS token
training appends, so a text that would be cut is reported instead.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tunewright.data.quarantine import RowError
from tunewright.dataset.example import Example
from tunewright.dataset.tokenize import ChatTokenizer, TooLongError

HISTOGRAM_BINS = 32


class TokenMeter:
    """Measures examples and keeps per-split lengths and trained-token counts."""

    def __init__(self, chat: ChatTokenizer) -> None:
        self.chat = chat
        self.lengths: dict[str, list[int]] = defaultdict(list)
        self.trained: dict[str, int] = defaultdict(int)

    def measure(self, example: Example, split: str) -> None:
        """Record the example under `split`; raises RowError if it is over the token limit."""
        self.record(split, *self.encode(example))

    def record(self, split: str, length: int, trained: int) -> None:
        """Count an example measured by `encode` under `split`."""
        self.lengths[split].append(length)
        self.trained[split] += trained

    def encode(self, example: Example) -> tuple[int, int]:
        """The example's length and trained tokens; raises RowError if over the token limit."""
        if example.is_chat:
            try:
                encoded = self.chat.encode_example(example)
            except TooLongError as e:
                raise RowError(str(e).split(": ", 1)[-1], "over the token limit") from None
            length, trained = len(encoded.input_ids), encoded.num_trained_tokens
        else:
            tokenizer = self.chat.tokenizer
            length = len(tokenizer(example.text, add_special_tokens=False)["input_ids"])
            length += tokenizer.eos_token_id is not None
            if length > self.chat.max_seq_len:
                raise RowError(
                    f"{length} tokens, over data.max_seq_len={self.chat.max_seq_len}",
                    "over the token limit",
                )
            trained = length
        return length, trained

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
