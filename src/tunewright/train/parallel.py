"""How the model is spread over the processes, chosen once in setup.

`Replicated`: every process holds the whole model (one process, or DDP through accelerate under
`torchrun`/`accelerate launch`). `Sharded`: weights, gradients and optimiser state are split over
the processes with torch's FSDP2 (`train.fsdp: true` under several processes). The loop asks the
chosen one how to prepare, checkpoint and save the model, and never asks which one it has.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from tunewright.errors import ConfigError
from tunewright.train.fsdp_state import gather_full_state
from tunewright.train.model_setup import causal_lm_of


class Parallelism(Protocol):
    sharded: bool  # load_checkpoint: under FSDP restoring is collective and shards whole tensors

    def shard(self, forward: nn.Module, device: torch.device) -> None:
        """Split the model over the processes; call before the optimiser exists."""

    def prepare(
        self, accelerator: Accelerator, forward: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The forward and optimiser as accelerate runs them. The scheduler stays outside
        accelerate: it would step once per process, but our step count is already global."""

    def checkpoint_state(
        self,
        model: nn.Module,
        trainable: dict[str, nn.Parameter],
        optimizer: torch.optim.Optimizer,
    ) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer | dict[str, Any]]:
        """The trainable tensors and the optimiser (or its whole state) for `save_checkpoint`.
        Collective: every rank calls it."""

    def whole_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The model's whole state for `save_pretrained`, or None to let it read the model's own.
        Collective: every rank calls it."""


class Replicated:
    """Every process holds the whole model; under several processes accelerate wraps it in DDP."""

    sharded = False

    def shard(self, forward: nn.Module, device: torch.device) -> None:
        pass

    def prepare(self, accelerator, forward, optimizer):
        return accelerator.prepare(forward, optimizer)

    def checkpoint_state(self, model, trainable, optimizer):
        return trainable, optimizer

    def whole_state_dict(self, model):
        return None


class Sharded:
    """FSDP2: each decoder layer's weights, gradients and optimiser state are split over ranks."""

    sharded = True

    def shard(self, forward: nn.Module, device: torch.device) -> None:
        # before the optimiser exists: sharding replaces the parameters with DTensors
        shard_for_fsdp(forward.to(device))

    def prepare(self, accelerator, forward, optimizer):
        # the model is already sharded: accelerate would wrap it in DDP
        return forward, accelerator.prepare(optimizer)

    def checkpoint_state(self, model, trainable, optimizer):
        return gather_full_state(model, optimizer)

    def whole_state_dict(self, model):
        return full_state_dict(model)


def choose_parallelism(accelerator: Accelerator, fsdp: bool) -> Parallelism:
    """Sharded under several processes with `train.fsdp`, else replicated."""
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            "launch without accelerate's --use_fsdp and set train.fsdp: true instead: "
            "tunewright shards the model itself with torch's FSDP2"
        )
    return Sharded() if fsdp and accelerator.num_processes > 1 else Replicated()


def shard_for_fsdp(forward: nn.Module) -> None:
    """FSDP2 (torch's `fully_shard`): every decoder layer is one unit, gathered just before it
    runs and freed after; the root unit holds the rest (embeddings, the tied head, the final norm)
    and is gathered for the whole forward, which is why the chunked loss can read the head's
    weight directly. Works on CPU (gloo) and GPU (NCCL) alike."""
    from torch.distributed.fsdp import fully_shard

    for layer in causal_lm_of(forward.model).model.layers:
        fully_shard(layer)
    fully_shard(forward)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state with FSDP shards gathered into whole tensors. Collective under FSDP:
    every rank must call it. A tied weight (the LM head sharing the embedding) is listed once,
    under its first name, as `save_pretrained` does for the model's own state."""
    from torch.distributed.tensor import DTensor

    seen: set[int] = set()
    gathered = {}
    for key, value in module.state_dict(keep_vars=True).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        value = value.detach()
        gathered[key] = value.full_tensor() if isinstance(value, DTensor) else value
    return gathered


def as_float(value) -> float:
    """A Python float from a scalar tensor, gathering it first if FSDP made it a DTensor."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)
