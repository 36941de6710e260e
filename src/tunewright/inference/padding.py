"""Left padding: a batch of prompts of different lengths that all end in the last column.

Both decoders (and export's logit comparison) need the same layout: every row's next token is
predicted at column -1 and new tokens are appended as one new column, pad positions are masked
out, and each row's position ids count only its real tokens, so a padded row computes exactly
what it would compute alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class PaddedBatch:
    input_ids: torch.Tensor  # (rows, width), long
    attention_mask: torch.Tensor  # (rows, width), 1 = a real token, 0 = padding

    @property
    def position_ids(self) -> torch.Tensor:
        """Each real token's position in its own prompt; pads get 0 (they are masked anyway)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, *, shared_prefix: int = 0
) -> PaddedBatch:
    """Stack `prompts` with padding on the left, so every prompt ends in the last column.

    With `shared_prefix` > 0 (the number of leading tokens every prompt has in common), the pads
    go between that prefix and the rest of each prompt ("prefix, pads, question"): the prefix
    then sits in the same columns in every row, as in the KV cache computed for it once.
    """
    width = shared_prefix + max(len(p) - shared_prefix for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        start = width - len(prompt) + shared_prefix  # the first column after this row's pads
        input_ids[row, :shared_prefix] = torch.tensor(prompt[:shared_prefix], dtype=torch.long)
        input_ids[row, start:] = torch.tensor(prompt[shared_prefix:], dtype=torch.long)
        attention_mask[row, :shared_prefix] = 1
        attention_mask[row, start:] = 1
    return PaddedBatch(input_ids, attention_mask)
