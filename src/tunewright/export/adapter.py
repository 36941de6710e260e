"""Adapter export: the PEFT adapter folder as peft and vLLM's LoRA serving load it.

The run's `adapter/` already is that folder (`adapter_config.json`, `adapter_model.safetensors`,
tokenizer files), so the export copies it byte for byte; the parity check reloads the copy onto a
freshly loaded base model, which proves the folder is complete on its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tunewright.export.publish import ExportError
from tunewright.models import load_model
from tunewright.runs import TunedRun


def write_adapter(tuned: TunedRun, folder: Path) -> list[str]:
    """Copy the adapter and its tokenizer into `folder`; returns notes for the user."""
    if tuned.method != "lora":
        raise ExportError(
            f"{tuned.run_dir} was fully fine-tuned, so it has no adapter; export `merged` or `gguf` instead"
        )
    for path in sorted(tuned.trained_dir.iterdir()):
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    notes = []
    peft_config = tuned.model.peft_config["default"]
    if peft_config.use_dora:
        notes.append("DoRA adapters load in peft, but vLLM's LoRA serving does not support them")
    if peft_config.modules_to_save:
        notes.append(
            "the adapter saves whole modules (modules_to_save), which vLLM's LoRA serving rejects"
        )
    return notes


def load_adapter(tuned: TunedRun, folder: Path) -> tuple[torch.nn.Module, object]:
    """Reload the exported adapter onto a fresh copy of the base model: (model, tokenizer)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = load_model(tuned.cfg.model.name, trust_remote_code=tuned.cfg.model.trust_remote_code)
    model = PeftModel.from_pretrained(base.model, folder)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
