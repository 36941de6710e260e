"""Whole (unsharded) training state under FSDP2, laid out as a single process lays it out.

A checkpoint from an FSDP run holds what one from a single process holds: the trainable tensors,
whole, under their parameter names, and the optimizer state numbered by each parameter's position
in the optimizer, as `Optimizer.state_dict()` numbers it. torch.distributed.checkpoint names
optimizer state by parameter name instead; the two helpers at the bottom translate.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import nn

__all__ = ["gather_full_state", "load_full_state"]


def gather_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trainable tensors and the optimizer's `state_dict()`, whole and on the CPU, on rank 0;
    empty dicts on the other ranks. Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    # cpu_offload: each tensor is gathered, copied to rank 0's CPU and dropped, so no device
    # ever holds the whole model or the whole optimizer state
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    # the state dict lists a tied weight under each of its names, and buffers too; keep exactly
    # what a single process saves (`named_parameters`, which lists a tied weight once)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    model_state = {name: value for name, value in model_state.items() if name in trainable}
    return model_state, _numbered(optimizer_state) if optimizer_state else {}


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Shard whole tensors (every rank passes the same ones, as `gather_full_state` gave them to
    rank 0) into the FSDP model and its optimizer. Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # strict=False: a LoRA checkpoint holds only the adapters; the frozen base keeps its weights
    set_model_state_dict(
        model, model_state, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    named = _named(optimizer_state, model, optimizer)
    set_optimizer_state_dict(
        model, optimizer, named, options=StateDictOptions(full_state_dict=True)
    )


def _numbered(state: dict[str, Any]) -> dict[str, Any]:
    """Optimizer state keyed by parameter name -> keyed by position, as `Optimizer.state_dict()`
    keys it (positions run through the param groups in order)."""
    names = chain.from_iterable(group["params"] for group in state["param_groups"])
    position = {name: i for i, name in enumerate(names)}
    return {
        "state": {position[name]: values for name, values in state["state"].items()},
        "param_groups": [
            group | {"params": [position[n] for n in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def _named(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The inverse of `_numbered`, for this optimizer's parameters."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [
        name_of[id(p)]
        for p in chain.from_iterable(group["params"] for group in optimizer.param_groups)
    ]
    return {
        "state": {names[position]: values for position, values in state["state"].items()},
        "param_groups": [
            group | {"params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
