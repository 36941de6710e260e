"""The tuned model of a run folder, loaded the way every exporter and the parity check need it.

A run folder holds `adapter/` (LoRA) or `model/` (full fine-tuning) and the resolved
`config.yaml`. The tuned model is loaded in fp32: it is the reference every export is compared
with, and on an AVX2 CPU bf16 inference is hundreds of times slower than fp32 anyway.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunewright.config import RunConfig
from tunewright.errors import ModelLoadError, TunewrightError
from tunewright.models import load_model


@dataclass
class TunedRun:
    run_dir: Path
    cfg: RunConfig
    method: Literal["lora", "full"]
    trained_dir: Path  # <run>/adapter or <run>/model
    model: torch.nn.Module  # a PeftModel (unmerged) for LoRA, the model itself for full fine-tuning
    tokenizer: PreTrainedTokenizerBase


def read_run_config(run_dir: Path) -> RunConfig:
    """The run's resolved config; a run trained without `tunewright run` has no config.yaml, so the
    base model is then read from the adapter's own config."""
    path = run_dir / "config.yaml"
    if path.is_file():
        return RunConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    adapter_config = run_dir / "adapter" / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        return RunConfig(name=run_dir.name, output_dir=str(run_dir.parent), model={"name": base})
    if (run_dir / "model" / "config.json").is_file():
        return RunConfig(
            name=run_dir.name, output_dir=str(run_dir.parent), train={"method": "full"}
        )
    raise TunewrightError(f"{run_dir} is not a trained run folder (no adapter/ or model/ inside)")


def trained_folder(run_dir: Path) -> tuple[Literal["lora", "full"], Path]:
    """Which kind of training the run did, and where its output is."""
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return "lora", run_dir / "adapter"
    if (run_dir / "model" / "config.json").is_file():
        return "full", run_dir / "model"
    raise TunewrightError(
        f"{run_dir} holds no trained model (no adapter/ or model/); run `tunewright train` first"
    )


def load_tuned(run_dir: str | Path) -> TunedRun:
    """Load a run's tuned model in fp32: base + adapter (unmerged) for LoRA, the model for full."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TunewrightError(f"run folder not found: {run_dir}")
    cfg = read_run_config(run_dir)
    method, trained = trained_folder(run_dir)
    if method == "lora":
        from peft import PeftModel

        loaded = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
        model = PeftModel.from_pretrained(loaded.model, trained)
        tokenizer = loaded.tokenizer
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                trained, dtype=torch.float32, use_safetensors=True
            )
            tokenizer = AutoTokenizer.from_pretrained(trained)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load the tuned model in {trained}: {e}") from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return TunedRun(run_dir, cfg, method, trained, model, tokenizer)


def merged_copy(tuned: TunedRun) -> PreTrainedModel:
    """The tuned model as one plain transformers model (LoRA folded into the base weights).

    A copy, so the unmerged model stays available as the parity reference.
    """
    if tuned.method == "full":
        return tuned.model
    merged = copy.deepcopy(tuned.model).merge_and_unload()
    merged.eval()
    return merged
