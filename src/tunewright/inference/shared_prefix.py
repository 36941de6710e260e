"""Decoding with one copy of a shared prompt prefix, and a KV cache that never grows by copying.

Evaluation prompts often share a long start (instruction, label list, k-shot examples) and differ
only in a short question. Copying the prefix's keys and values into every row makes each decode
step read B copies of it, and transformers' DynamicCache grows by `torch.cat`, copying the whole
cache at every step. Here instead:

- `RowCache` keeps, per layer, a buffer preallocated for each row's own tokens (its question and
  the generated answer); a step writes one column into it and attends to a view, no copy.
- The prefix's keys and values are kept once ([kv_heads, prefix, head_dim]). The attention
  function `cascade_attention` splits each query's softmax in two: over the prefix, where the
  queries of every row and every head of a KV group are folded into one matrix product per KV
  head (the prefix is visible to every later token, so it needs no mask); and over the row's own
  tokens, with the row's mask. The two parts are merged exactly through their running maxima and
  sums (the log-sum-exp trick), which is the softmax over all keys at once, reordered.

Query heads are folded onto their KV head by a reshape (head h reads KV head h // group, as
transformers' `repeat_kv` lays them out), so the keys are never repeated per query head.

Why not transformers' StaticCache with its SDPA: it removes the concatenation but still keeps a
copy of the prefix per row, so every step reads B copies of it, each attended by one query
token per head (a matrix-vector product, bound by memory); here the prefix is read once per
step in a product with all B x heads queries, at the matrix-product rate (measured against each
other: benchmarks/generation_batching.py --rates --label-list).

The cache tells transformers' mask builder that its columns start after the prefix
(`get_mask_sizes` returns the prefix length as the offset): the mask the model builds from the
full-width attention mask then covers exactly the row's own keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, Cache, PreTrainedModel
from transformers.cache_utils import CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION_NAME = "tunewright_cascade"
# Score elements per chunk of rows when many query tokens attend at once (a batch's prefill): keeps
# the (rows, heads, queries, keys) score tensor to a few tens of MB.
MAX_SCORES_PER_CHUNK = 1 << 23


@dataclass(frozen=True, slots=True)
class SharedPrefix:
    """The prefix's keys and values, once: per layer [kv_heads, prefix_tokens, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


# The prefix of the generate() call running in this thread (None: attend to the rows' own keys).
# The attention function is called by transformers with no handle on the cache, hence a context
# variable rather than a global: a second thread generating with another prefix is unaffected,
# and one using the model meanwhile with a plain cache (the engine) sees no prefix and gets the
# same attention as with SDPA.
_ACTIVE_PREFIX: ContextVar[SharedPrefix | None] = ContextVar("tunewright_prefix", default=None)


class RowLayer(CacheLayerMixin):
    """One layer's per-row keys and values in a buffer sized up front: [rows, kv_heads, capacity,
    head_dim]. Positions before `prefix_length` belong to the shared prefix, held elsewhere."""

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int, prefix_length: int = 0):
        super().__init__()
        self.capacity = capacity
        self.prefix_length = prefix_length
        self.length = 0  # row tokens written so far

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads, _, _ = key_states.shape
        self.keys = key_states.new_zeros((rows, heads, self.capacity, key_states.shape[-1]))
        self.values = value_states.new_zeros((rows, heads, self.capacity, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"RowLayer holds {self.capacity} tokens per row, {end} were written")
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # mask columns: this layer's own keys, which follow the prefix's positions
        return self.length + query_length, self.prefix_length

    def get_seq_length(self) -> int:
        return self.prefix_length + self.length

    def get_max_length(self) -> int:
        return self.prefix_length + self.capacity


class RowCache(Cache):
    """A KV cache of `RowLayer`s (one per decoder layer): no `torch.cat` when it grows."""

    def __init__(self, num_layers: int, capacity: int, prefix_length: int = 0):
        super().__init__(layers=[RowLayer(capacity, prefix_length) for _ in range(num_layers)])


def prefix_of(cache: Cache) -> SharedPrefix:
    """The keys and values of a batch-of-one cache, in the layout `cascade_attention` reads."""
    return SharedPrefix(
        keys=[layer.keys[0] for layer in cache.layers],
        values=[layer.values[0] for layer in cache.layers],
    )


@contextlib.contextmanager
def cascade(model: PreTrainedModel, prefix: SharedPrefix | None) -> Iterator[None]:
    """Run `model` with `cascade_attention` (and `prefix`, if any) inside the block, then put its
    attention implementation back."""
    before = model.config._attn_implementation
    token = _ACTIVE_PREFIX.set(prefix)
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
        _ACTIVE_PREFIX.reset(token)


def cascade_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over the shared prefix (if any) and the rows' own keys, merged exactly.

    query [rows, heads, q, d]; key/value [rows, kv_heads, k, d] (the rows' own tokens only);
    attention_mask bool [rows, 1, q, k] over the rows' own keys, or None for plain causal.
    Returns [rows, q, heads, d], as transformers' attention functions do.
    """
    prefix = _ACTIVE_PREFIX.get()
    rows, heads, q_len, dim = query.shape
    if prefix is None and q_len > 1:
        # a prefill with no prefix to merge: the stock kernel, as without this module
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling)
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    if attention_mask is None:  # causal within the rows' own keys, bottom-right aligned
        k_len = key.shape[2]
        causal = torch.arange(q_len)[:, None] + (k_len - q_len) >= torch.arange(k_len)[None, :]
        attention_mask = causal.to(query.device)[None, None]
    # fold each KV group's query heads (and query tokens) into rows of one matrix; scaling the
    # queries costs less than scaling the scores
    folded = (query * scale).reshape(rows, kv_heads, group * q_len, dim)
    keys_seen = key.shape[2] + (prefix.length if prefix is not None else 0)
    chunk = max(1, MAX_SCORES_PER_CHUNK // (heads * q_len * keys_seen))
    parts = []
    for r in range(0, rows, chunk):  # one chunk at decode time
        mask = attention_mask[r : r + chunk] if attention_mask.shape[0] > 1 else attention_mask
        numerator, top, total = _own_part(
            folded[r : r + chunk], key[r : r + chunk], value[r : r + chunk], mask, group
        )
        if prefix is not None:
            numerator, total = _add_prefix(
                numerator,
                top,
                total,
                folded[r : r + chunk],
                prefix.keys[module.layer_idx],
                prefix.values[module.layer_idx],
            )
        parts.append((numerator / total).to(query.dtype))
    attended = parts[0] if len(parts) == 1 else torch.cat(parts)
    return attended.reshape(rows, heads, q_len, dim).transpose(1, 2).contiguous(), None


def _own_part(folded, key, value, mask, group: int):
    """Softmax over the rows' own keys, unnormalised: (weighted values, max score, weight sum)."""
    rows, kv_heads, gq, _ = folded.shape
    q_len = gq // group
    scores = torch.matmul(folded, key.transpose(2, 3))  # [rows, kv, group*q, k]
    scores = scores.view(rows, kv_heads, group, q_len, -1).masked_fill(
        ~mask[:, :, None], float("-inf")
    )
    scores = scores.view(rows, kv_heads, gq, -1)
    top = scores.amax(-1, keepdim=True)
    # a pad query may see none of the row's own keys (max -inf): its weights are then all 0, and
    # the prefix's part, which every query sees, keeps its total above 0
    weights = (scores - top.nan_to_num(neginf=0.0)).exp_()
    # the merge runs in float32 (small tensors): bf16 sums of hundreds of weights would round
    return (
        torch.matmul(weights, value).float(),
        top.float(),
        weights.sum(-1, keepdim=True, dtype=torch.float32),
    )


def _add_prefix(numerator, top, total, folded, keys, values):
    """Merge the prefix's part (keys/values [kv, prefix, d]) into the rows' own part: every row,
    head and query of a KV group in one product with the prefix's keys, both parts rescaled to
    their common maximum."""
    rows, kv_heads, gq, dim = folded.shape
    stacked = folded.transpose(0, 1).reshape(kv_heads, rows * gq, dim)
    scores = torch.matmul(stacked, keys.transpose(1, 2))  # [kv, rows*gq, prefix]
    top_p = scores.amax(-1, keepdim=True)
    weights = (scores - top_p).exp_()
    num_p = torch.matmul(weights, values).float().view(kv_heads, rows, gq, dim).transpose(0, 1)
    sum_p = weights.sum(-1, keepdim=True, dtype=torch.float32)
    sum_p = sum_p.view(kv_heads, rows, gq, 1).transpose(0, 1)
    top_p = top_p.float().view(kv_heads, rows, gq, 1).transpose(0, 1)
    common = torch.maximum(top_p, top)
    a, b = (top_p - common).exp_(), (top - common).exp_()
    return num_p * a + numerator * b, sum_p * a + total * b


AttentionInterface.register(ATTENTION_NAME, cascade_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
