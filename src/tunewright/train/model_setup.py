"""Which parameters train (LoRA via peft, or all of them), and the optimiser over them."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from torch import nn
from transformers import PreTrainedModel

from tunewright.config import TrainConfig
from tunewright.train.loss import chunked_cross_entropy
from tunewright.train.shared_prefix import body_after_prefix


def apply_training_method(model: PreTrainedModel, cfg: TrainConfig, precision: str) -> nn.Module:
    """Freeze what does not train and add LoRA adapters when asked; returns the model to train."""
    if cfg.activation_checkpointing:
        # non-reentrant: correct with frozen embeddings (no enable_input_require_grads hack needed)
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    if cfg.method == "full":
        # fp32 master weights even under bf16 autocast: pure-bf16 updates vanish in rounding
        model.float()
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if precision == "bf16":
        # frozen weights never update, so bf16 storage loses nothing and skips autocast's casts
        model.to(torch.bfloat16)
    if cfg.init_adapter:
        # continue a trained adapter (the SFT stage's, before preference tuning) with its own
        # rank, targets and layers; fp32 for the same reason as below
        return PeftModel.from_pretrained(
            model, cfg.init_adapter, is_trainable=True, autocast_adapter_dtype=True
        )
    num_layers = model.config.num_hidden_layers
    top = min(cfg.lora_layers or num_layers, num_layers)
    targets = cfg.lora_target_modules
    if targets == "all-linear" and cfg.lora_layers:
        targets = _linear_module_names(model)  # peft takes layers_to_transform with a list only
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        use_dora=cfg.use_dora,
        layers_to_transform=list(range(num_layers - top, num_layers)) if cfg.lora_layers else None,
        task_type="CAUSAL_LM",
    )
    # adapters stay fp32 (autocast_adapter_dtype) so small updates are not lost to bf16 rounding
    return get_peft_model(model, lora, autocast_adapter_dtype=True)


def make_optimizer(
    model: nn.Module, trainable: dict[str, nn.Parameter], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; under LoRA+ the B matrices get lr x loraplus_lr_ratio.

    LoRA+ (Hayou et al., 2024): B starts at zero and A at random, so one learning rate for both
    is too small for B; a larger one for B learns faster at no cost per step."""
    if cfg.method == "lora" and cfg.loraplus_lr_ratio:
        return create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=cfg.lr,
            loraplus_lr_ratio=cfg.loraplus_lr_ratio,
            loraplus_weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(trainable.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _linear_module_names(model: PreTrainedModel) -> list[str]:
    """Leaf names of every nn.Linear except the output head (what peft's 'all-linear' means)."""
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head
        }
    )


def soft(soft_ids, soft_probs, hard_share):
    """The loss's `soft` argument from a batch's soft-target tensors (None when it has none)."""
    return None if soft_ids is None else (soft_ids, soft_probs, hard_share)


def causal_lm_of(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def body_hidden_states(
    causal_lm: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    prefix_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model body's last hidden states [B, T, H]: the chunked losses start from them."""
    if prefix_ids is not None:  # rows that all follow one shared prefix (train/shared_prefix.py)
        return body_after_prefix(causal_lm, prefix_ids, input_ids, attention_mask)
    return causal_lm.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    ).last_hidden_state


class ChunkedLossForward(nn.Module):
    """Model body + memory-lean loss as one module, so DDP/FSDP wrap the whole training forward.

    Returns (summed weighted NLL, summed weight) for the micro-batch.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        position_ids=None,
        loss_weights=None,
        prefix_ids=None,
        unit_ids=None,  # which training units the rows are: only the frozen-layer cache reads it
        soft_ids=None,  # soft targets of replayed rows (train/teacher.py), with the two below
        soft_probs=None,
        hard_share=None,
    ):
        causal_lm = causal_lm_of(self.model)
        hidden = body_hidden_states(causal_lm, input_ids, attention_mask, position_ids, prefix_ids)
        return chunked_cross_entropy(
            hidden,
            causal_lm.lm_head.weight,
            labels,
            loss_weights,
            soft=soft(soft_ids, soft_probs, hard_share),
        )
