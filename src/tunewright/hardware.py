"""What this machine runs fast, and so which precision every stage uses.

One place decides: training (`train.precision`), evaluation (in the precision the run trained
in), serving and export all ask here instead of choosing a dtype of their own.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["bf16", "fp32"]


def fast_bf16_available() -> bool:
    """True where bf16 matrix products are fast: CUDA with bf16, or a CPU with AMX/AVX512-bf16.

    On other CPUs (plain AVX2) torch runs bf16 matmuls through a slow fallback, several times
    slower than fp32 (measured: docs/results.md, "Machines"), so 'auto' must not pick bf16 there. torch exposes the CPU feature
    checks only as private functions; they have been stable since torch 2.1.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def cpu_only() -> bool:
    """No accelerator: tells accelerate to run (and, under torchrun, all-reduce with gloo) on CPU.

    accelerate only treats a torchrun launch as multi-process on CPU when asked for the CPU
    explicitly; otherwise every rank would silently train alone.
    """
    return not torch.accelerator.is_available()


def resolve_precision(setting: str) -> Precision:
    """'bf16' or 'fp32' for a setting of 'auto', 'bf16' or 'fp32'."""
    if setting == "auto":
        return "bf16" if fast_bf16_available() else "fp32"
    if setting not in ("bf16", "fp32"):
        raise ValueError(f"precision {setting!r}: choose auto, bf16 or fp32")
    return setting  # type: ignore[return-value]


def torch_dtype(setting: str) -> torch.dtype:
    """The dtype to load weights in for inference under a precision setting."""
    return torch.bfloat16 if resolve_precision(setting) == "bf16" else torch.float32


# Export loads the tuned model in fp32 whatever the machine: it is the reference every exported
# artifact is compared with, so it must not carry rounding of its own.
REFERENCE_DTYPE = torch.float32
