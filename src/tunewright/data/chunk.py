"""Cut raw texts (continued pre-training) into pieces that fit `data.max_seq_len` tokens.

Nothing is truncated: a text longer than the limit becomes several examples, cut at token
boundaries (preferring a boundary before whitespace, within the last tenth of the window), each
leaving room for the end-of-sequence token that training appends. Pieces are slices of the
original text, found through the fast tokenizer's character offsets.
"""

from __future__ import annotations

from dataclasses import replace

from transformers import PreTrainedTokenizerBase

from tunewright.dataset.example import Example


class TextChunker:
    """Splits `text` examples into pieces of at most `max_seq_len - 1` tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_seq_len - 1  # training appends EOS

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chunk(self, example: Example) -> list[Example]:
        """The example itself if it fits, else its pieces (sources get a `#k` suffix)."""
        text = example.text
        if text is None:
            return [example]
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        if len(offsets) <= self.max_tokens:
            return [example]
        pieces, start = [], 0
        while start < len(offsets):
            end = min(start + self.max_tokens, len(offsets))
            if end < len(offsets):
                end = self._soft_end(text, offsets, start, end)
            while True:  # re-tokenising a slice can merge differently at its edges: check it
                piece = text[offsets[start][0] : offsets[end - 1][1]]
                excess = self._count(piece) - self.max_tokens
                if excess <= 0 or end - start <= 1:
                    break
                end -= excess
            if piece.strip():
                pieces.append(piece)
            start = end
        return [
            replace(example, text=piece, source=f"{example.source}#{k + 1}")
            for k, piece in enumerate(pieces)
        ]

    def _soft_end(self, text: str, offsets: list[tuple[int, int]], start: int, end: int) -> int:
        """Move `end` back to a token that starts at whitespace, if one is close."""
        floor = max(start + 1, end - self.max_tokens // 10)
        for k in range(end, floor - 1, -1):
            at = offsets[k][0]
            if text[at : at + 1].isspace() or text[at - 1 : at].isspace():
                return k
        return end
