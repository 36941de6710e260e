"""The training loop, top to bottom: setup, then for each optimiser step forward, backward,
accumulate, clip, step; maybe evaluate; log. `accelerate` handles device, precision and
distribution; it never owns the control flow.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_scheduler

from tunewright.config import RunConfig
from tunewright.data.prepare import PreparedDataset
from tunewright.data.tokenize import ChatTokenizer, TokenizedExample
from tunewright.errors import TrainingDivergedError
from tunewright.models import load_model
from tunewright.train.batching import batch_schedule, collate
from tunewright.train.metrics_log import MetricsLogger
from tunewright.train.model_setup import ChunkedLossForward, apply_training_method, resolve_precision


@dataclass
class TrainResult:
    output_dir: Path  # the adapter folder (LoRA) or the full model folder
    steps: int
    train_loss: float
    val_loss: float | None
    trained_tokens: int  # non-padding tokens that went through forward and backward
    seconds: float
    tokens_per_second: float
    precision: str


def train(cfg: RunConfig, dataset: PreparedDataset, *, console: Console | None = None) -> TrainResult:
    """Fine-tune `cfg.model` on `dataset.train`; writes the adapter/model and metrics to the run folder."""
    console = console or Console(stderr=True)
    tc = cfg.train
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(tc.seed)
    precision = resolve_precision(tc.precision)
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no")

    # --- setup: model, data, optimiser ---------------------------------------------------
    loaded = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    chat = ChatTokenizer(loaded.tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
    train_examples = [chat.encode_example(e) for e in dataset.train]
    val_examples = [chat.encode_example(e) for e in dataset.val]
    pad_id = loaded.tokenizer.pad_token_id

    model = apply_training_method(loaded.model, tc, precision)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    forward = ChunkedLossForward(model)

    schedule = batch_schedule([len(e.input_ids) for e in train_examples], tc.batch_size, tc.epochs, tc.seed)
    total_steps = math.ceil(len(schedule) / tc.grad_accum_steps)
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(
        tc.lr_schedule if tc.lr_schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=min(tc.lr_warmup_steps, total_steps // 2),
        num_training_steps=total_steps,
    )
    forward, optimizer, scheduler = accelerator.prepare(forward, optimizer, scheduler)
    logger = MetricsLogger(run_dir, cfg.name, cfg.model_dump(mode="json"))
    console.print(
        f"training {cfg.model.name} ({tc.method}, {precision}): {sum(p.numel() for p in trainable):,} "
        f"trainable parameters, {len(train_examples)} examples, {total_steps} steps"
    )

    # --- the loop -------------------------------------------------------------------------
    trained_tokens = 0
    loss_ema = None
    val_loss = None
    started = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("train", total=total_steps, loss=float("nan"), tps=0.0)
        for step in range(total_steps):
            micro_batches = schedule[step * tc.grad_accum_steps : (step + 1) * tc.grad_accum_steps]
            batches = [collate([train_examples[i] for i in idx], pad_id) for idx in micro_batches]
            # normalise by the step's total trained weight, so accumulation equals one big batch
            step_weight = sum(_trained_weight(b) for b in batches)
            step_loss = 0.0
            for batch in batches:
                with accelerator.autocast():
                    nll_sum, _ = forward(**batch)
                accelerator.backward(nll_sum / step_weight)
                step_loss += nll_sum.item() / step_weight
                trained_tokens += int(batch["attention_mask"].sum())
            grad_norm = accelerator.clip_grad_norm_(trainable, tc.max_grad_norm or float("inf"))
            if not (math.isfinite(step_loss) and math.isfinite(float(grad_norm))):
                # stop before optimizer.step(): the weights (and any checkpoint) stay finite
                raise TrainingDivergedError(
                    f"step {step + 1}: loss={step_loss} grad_norm={float(grad_norm)} is not finite; "
                    "lower train.lr or check the data. Nothing non-finite was saved."
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = time.perf_counter() - started
            loss_ema = step_loss if loss_ema is None else 0.9 * loss_ema + 0.1 * step_loss
            progress.update(task, advance=1, loss=loss_ema, tps=trained_tokens / elapsed)
            if (step + 1) % tc.log_every_steps == 0 or step + 1 == total_steps:
                logger.log(
                    step + 1,
                    train_loss=step_loss,
                    lr=scheduler.get_last_lr()[0],
                    grad_norm=float(grad_norm),
                    tokens_per_second=trained_tokens / elapsed,
                )
            if tc.eval_every_steps and (step + 1) % tc.eval_every_steps == 0 and val_examples:
                val_loss = evaluate_loss(forward, val_examples, tc.batch_size, pad_id, accelerator)
                logger.log(step + 1, val_loss=val_loss)
                forward.train()

    seconds = time.perf_counter() - started
    if val_examples:
        val_loss = evaluate_loss(forward, val_examples, tc.batch_size, pad_id, accelerator)
        logger.log(total_steps, val_loss=val_loss)
    logger.close()
    output_dir = _save_trained(accelerator.unwrap_model(forward).model, loaded.tokenizer, run_dir, tc.method)
    return TrainResult(
        output_dir=output_dir,
        steps=total_steps,
        train_loss=loss_ema if loss_ema is not None else float("nan"),
        val_loss=val_loss,
        trained_tokens=trained_tokens,
        seconds=seconds,
        tokens_per_second=trained_tokens / seconds if seconds > 0 else 0.0,
        precision=precision,
    )


@torch.no_grad()
def evaluate_loss(forward, examples: list[TokenizedExample], batch_size: int, pad_id: int, accelerator) -> float:
    """Mean per-token loss over `examples` (teacher forcing)."""
    forward.eval()
    total, weight = 0.0, 0.0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        with accelerator.autocast():
            nll_sum, w = forward(**batch)
        total += float(nll_sum)
        weight += float(w)
    return total / max(weight, 1e-9)


def _trained_weight(batch: dict[str, torch.Tensor]) -> float:
    if "loss_weights" in batch:
        return float(batch["loss_weights"][:, 1:].sum())
    return float((batch["labels"][:, 1:] != -100).sum())


def _save_trained(model, tokenizer, run_dir: Path, method: str) -> Path:
    """Save the adapter (LoRA) or the whole model as safetensors, atomically."""
    target = run_dir / ("adapter" if method == "lora" else "model")
    tmp = run_dir / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tps]:.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
