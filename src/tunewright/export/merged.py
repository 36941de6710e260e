"""Merged export: LoRA folded into the base weights, saved as a standard Hugging Face folder
(safetensors, tokenizer with its chat template, generation config) that
`AutoModelForCausalLM.from_pretrained` loads with no tunewright and no peft installed.

Weights stay fp32, the precision the tuned model runs in here, so the merge is the only change.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunewright.inference.tokens import stop_token_ids
from tunewright.runs import TunedRun


def merged_copy(tuned: TunedRun) -> PreTrainedModel:
    """The tuned model as one plain transformers model (LoRA folded into the base weights).

    A copy, so the unmerged model stays available as the parity reference.
    """
    if tuned.method == "full":
        return tuned.model
    merged = copy.deepcopy(tuned.model).merge_and_unload()
    merged.eval()
    return merged


def write_merged(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> list[str]:
    """Save the merged model, tokenizer and a generation config that stops at end-of-turn."""
    generation_config = model.generation_config
    # stop at the chat template's end-of-turn token as well as EOS, as evaluation does
    generation_config.eos_token_id = stop_token_ids(tokenizer)
    generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return []


def load_merged(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Reload the merged folder the way any transformers user would: (model, tokenizer)."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
