"""Frozen-layer cache: with LoRA on the top `train.lora_layers` only, later epochs run only those.

Below the adapted layers nothing trains, so the hidden states entering the first adapted layer
depend on the example alone. They are computed once, the first time a unit (an example) is seen,
and kept per unit, unpadded ([tokens, hidden], in the dtype the forward produced: nothing is
rounded). Every later pass pads the micro-batch's units from the cache and runs only the top
layers, the final norm and the chunked loss. Backward already stopped at the first adapted layer;
what this saves is the forward through the layers below it.

Same result: rows are right-padded and attention is causal, so a row's real positions never see
its padding, and its cached states do not depend on the micro-batch that computed them, up to
float rounding (tested). Exact resume: a unit's states always come from the first micro-batch
this process runs it in (the schedule is fixed by the seed), so a resumed run, whose cache starts
empty, refills a unit by recomputing that micro-batch and gets the bits the uninterrupted run
kept, wherever padding or batch shape would change the rounding.

Where it applies, chosen once in `choose_forward`: LoRA with `lora_layers` below the layer count,
a Llama-family model (SmolLM2 is one), a run that visits some unit twice, no packing, no
activation checkpointing (the memory-lean mode), no FSDP, and caches (all processes') within a
quarter of this machine's memory. They are kept in memory only; above that bound, or for another
architecture, the cache is off with a note. Elsewhere the forward is `ChunkedLossForward`, as
without it. Under DDP every process keeps its own cache of the units it runs (one that another
process ran first costs it a full forward once, in its own first micro-batch with it).

With a shared prefix (train/shared_prefix.py) the prompt start a micro-batch's rows share runs
once in both halves, as without the cache: the bottom layers fill the cache from the prefix's
single pass, and the top layers run the prefix once from the states of its first row (every row
has the same ones) and broadcast its keys and values to the rows. The cache keeps whole rows, so
a later micro-batch with a shorter common prefix (mixed with replayed chats) still finds every
position it needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask

from tunewright.config import TrainConfig
from tunewright.dataset.tokenize import TokenizedExample
from tunewright.train.batching import collate
from tunewright.train.loss import chunked_cross_entropy
from tunewright.train.micro_batches import MicroBatches
from tunewright.train.model_setup import ChunkedLossForward, causal_lm_of, soft
from tunewright.train.shared_prefix import collate_shared_prefix

# of this machine's memory: the rest is the training's own (weights, activations, optimiser)
MAX_SHARE_OF_MEMORY = 0.25


def run_layers(
    llama: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[nn.Module],
    prefix: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`layers` of a `LlamaModel` on `hidden` [B, T, H] (right-padded rows, `attention_mask`
    [B, T]), with the causal mask and rotary position embeddings `LlamaModel.forward` builds.

    `prefix` [1, P, H]: the states of a prompt start every row follows. It runs once, at
    positions 0..P-1; its keys and values are broadcast to the rows (views: backward sums the
    rows' gradients into its one pass, as train/shared_prefix.py does for the whole model), and
    the rows sit at positions P..P+T-1. Returns the prefix's states after `layers` (None without
    one) and the rows'."""
    if prefix is None:
        return None, _run(llama, hidden, attention_mask, layers, None, 0)
    rows, prefix_len = hidden.shape[0], prefix.shape[1]
    cache = DynamicCache(config=llama.config)
    # the prefix alone: causal, nothing padded, no keys before it
    prefix = _run(llama, prefix, attention_mask.new_ones(1, prefix_len), layers, cache, 0)
    for layer in layers:
        kept = cache.layers[layer.self_attn.layer_idx]
        kept.keys = kept.keys.expand(rows, -1, -1, -1)
        kept.values = kept.values.expand(rows, -1, -1, -1)
    return prefix, _run(llama, hidden, attention_mask, layers, cache, prefix_len)


def _run(llama, hidden, attention_mask, layers, cache, offset: int) -> torch.Tensor:
    """`layers` on rows at positions offset..offset+T-1, after `offset` positions of keys and
    values already in `cache` that every row attends to."""
    length = hidden.shape[1]
    position_ids = torch.arange(offset, offset + length, device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(
        config=llama.config,
        inputs_embeds=hidden,
        attention_mask=torch.cat([attention_mask.new_ones(len(hidden), offset), attention_mask], 1),
        cache=cache,
        position_ids=position_ids,
        # the cache holds only these layers' keys and values: size the mask by the first of them
        layer_idx=None if cache is None else layers[0].self_attn.layer_idx,
    )
    position_embeddings = llama.rotary_emb(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            cache=cache,
            use_cache=cache is not None,
        )
    return hidden


class FrozenBottom:
    """The hidden states entering the first adapted layer, per training unit, filled on first use."""

    def __init__(
        self,
        units: Sequence[TokenizedExample],
        first_batch: dict[int, list[int]],
        pad_id: int,
        frozen_layers: int,
        *,
        share_prefix: bool = False,
    ):
        self.units = units
        self.first_batch = first_batch  # unit -> the first of this process's micro-batches with it
        self.pad_id = pad_id
        self.frozen_layers = frozen_layers
        self.share_prefix = share_prefix  # fill as training collates: the common prefix once
        self.hidden: dict[int, torch.Tensor] = {}

    def rows(
        self, llama: nn.Module, unit_ids: list[int], prefix_len: int = 0
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The states of the `prefix_len` positions the units share ([1, P, H], from the first
        unit; None for 0), and each unit's after them, right-padded with zeros [B, T, H]."""
        for unit in unit_ids:
            if unit not in self.hidden:
                self.fill(llama, self.first_batch[unit])
        states = [self.hidden[u] for u in unit_ids]
        prefix = states[0][:prefix_len].unsqueeze(0) if prefix_len else None
        return prefix, pad_sequence([s[prefix_len:] for s in states], batch_first=True)

    @torch.no_grad()
    def fill(self, llama: nn.Module, unit_ids: list[int]) -> None:
        """Run the frozen layers on the micro-batch `unit_ids` (right-padded, its common prefix
        once when sharing) and keep the real positions of the units it is the first micro-batch
        of."""
        rows = [self.units[u] for u in unit_ids]
        batch = (collate_shared_prefix if self.share_prefix else collate)(rows, self.pad_id)
        embed = llama.embed_tokens
        device = embed.weight.device
        input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        prefix_ids = batch.get("prefix_ids")
        prefix = None if prefix_ids is None else embed(prefix_ids.to(device))
        bottom = llama.layers[: self.frozen_layers]
        prefix, hidden = run_layers(llama, embed(input_ids), mask, bottom, prefix)
        skipped = 0 if prefix is None else prefix.shape[1]
        for row, unit in enumerate(unit_ids):
            # a unit first seen elsewhere keeps that micro-batch's bits (an equal one's are equal)
            if self.first_batch.get(unit) == unit_ids:
                # the whole row, a copy: the padded batch tensor is freed
                own = hidden[row, : len(self.units[unit].input_ids) - skipped]
                self.hidden[unit] = own.clone() if prefix is None else torch.cat([prefix[0], own])


class FrozenCacheForward(ChunkedLossForward):
    """`ChunkedLossForward` whose training micro-batches start at the first adapted layer, from
    the frozen-layer cache. Batches without `unit_ids` (validation) run in full."""

    def __init__(self, model: nn.Module, bottom: FrozenBottom):
        super().__init__(model)
        self.bottom = bottom

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        position_ids=None,
        loss_weights=None,
        prefix_ids=None,
        unit_ids=None,
        soft_ids=None,
        soft_probs=None,
        hard_share=None,
    ):
        if unit_ids is None:
            return super().forward(
                input_ids, attention_mask, labels, position_ids, loss_weights, prefix_ids
            )
        causal_lm = causal_lm_of(self.model)
        llama = causal_lm.model
        # the rows after the shared prefix: labels, mask and weights already are
        prefix_len = 0 if prefix_ids is None else prefix_ids.shape[1]
        prefix, hidden = self.bottom.rows(llama, unit_ids.tolist(), prefix_len)
        top = llama.layers[self.bottom.frozen_layers : llama.config.num_hidden_layers]
        _, hidden = run_layers(llama, hidden, attention_mask, top, prefix)
        return chunked_cross_entropy(
            llama.norm(hidden),
            causal_lm.lm_head.weight,
            labels,
            loss_weights,
            soft=soft(soft_ids, soft_probs, hard_share),
        )


def first_micro_batches(schedule: list[list[int]]) -> dict[int, list[int]]:
    """Each unit the schedule visits -> the first micro-batch it is in."""
    first: dict[int, list[int]] = {}
    for batch in schedule:
        for unit in batch:
            first.setdefault(unit, batch)
    return first


def choose_forward(
    model: nn.Module,
    tc: TrainConfig,
    data: MicroBatches,
    schedule: list[list[int]],
    *,
    pad_id: int,
    sharded: bool,
    processes: int = 1,
) -> tuple[ChunkedLossForward, str | None]:
    """The training forward, through the frozen-layer cache where it applies, and a line for the
    console saying which (None: the cache does not apply to this mode). `schedule`: this
    process's planned micro-batches, in the order it runs them; `processes`: how many keep a
    cache of about this size."""
    causal_lm = causal_lm_of(model)
    config = causal_lm.config
    layers = config.num_hidden_layers
    frozen = layers - tc.lora_layers if tc.lora_layers else 0
    first_batch = first_micro_batches(schedule)
    revisits = sum(len(batch) for batch in schedule) > len(first_batch)
    if not (
        tc.cache_frozen_layers
        and tc.method == "lora"
        and frozen > 0
        and revisits
        and not tc.packing
        and not tc.activation_checkpointing
        and not sharded
    ):
        return ChunkedLossForward(model), None
    if not isinstance(causal_lm, LlamaForCausalLM):
        return ChunkedLossForward(model), (
            f"train.cache_frozen_layers: off for {type(causal_lm).__name__} (Llama-family models "
            "only); every pass runs every layer"
        )
    per_token = config.hidden_size * causal_lm.model.embed_tokens.weight.element_size()
    size = per_token * sum(len(data.units[u].input_ids) for u in first_batch)
    bound = MAX_SHARE_OF_MEMORY * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size * processes > bound:
        return ChunkedLossForward(model), (
            f"train.cache_frozen_layers: off, {processes} x {size / 2**30:.1f} GiB would pass a "
            f"quarter of this machine's memory ({bound / 2**30:.1f} GiB); every pass runs every "
            "layer"
        )
    # the cache needs plain rows without activation checkpointing or sharding, where training
    # shares the prefix exactly when `train.shared_prefix` says so (train/setup.py)
    bottom = FrozenBottom(data.units, first_batch, pad_id, frozen, share_prefix=tc.shared_prefix)
    return FrozenCacheForward(model, bottom), (
        f"frozen-layer cache: layers 0-{frozen - 1} of {layers} run once per example "
        f"({size / 2**20:.0f} MiB in memory)"
    )
