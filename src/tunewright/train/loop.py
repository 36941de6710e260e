"""The training loop, top to bottom: setup, then for each optimiser step forward, backward,
accumulate, clip, step; maybe validate; maybe checkpoint; log.

`accelerate` handles device, precision and distribution (launch with `accelerate launch` or
`torchrun` for DDP/FSDP); it never owns the control flow. LoRA vs full fine-tuning is a flag
(which parameters train), not a second loop.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from rich.console import Console
from transformers import get_scheduler

from tunewright.config import RunConfig, save_config
from tunewright.dataset.prepared import PreparedDataset
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.errors import ConfigError, TrainingDivergedError
from tunewright.hardware import cpu_only, resolve_precision
from tunewright.models import load_model
from tunewright.runs import save_trained
from tunewright.train.batching import batch_schedule
from tunewright.train.checkpoint import (
    gather_rng_states,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tunewright.train.fsdp_state import gather_full_state
from tunewright.train.host_memory import release_freed_tensors_to_os
from tunewright.train.metrics_log import MetricsLogger
from tunewright.train.model_setup import (
    ChunkedLossForward,
    apply_training_method,
    as_float,
    full_state_dict,
    make_optimizer,
    shard_for_fsdp,
)
from tunewright.train.replay import base_replay, encode_replay
from tunewright.train.steps import MicroBatches, evaluate_loss, progress_bar
from tunewright.train.time_budget import budget_scheduler


@dataclass
class TrainResult:
    output_dir: (
        Path | None
    )  # the adapter folder (LoRA) or the full model folder; None for a dry run
    steps: int  # optimiser steps taken (including those before a resume)
    train_loss: float
    val_loss: float | None  # of the weights that were saved (the best ones under early stopping)
    trained_tokens: int  # non-padding tokens that went through forward and backward
    seconds: float
    tokens_per_second: float
    precision: str
    peak_memory_mb: float = 0.0
    planned_steps: int = 0
    eta_seconds: float | None = None  # dry run: estimated time for the whole run
    planned_step_tokens: list[int] | None = None  # dry run: tokens in each planned optimiser step
    stopped_early: bool = False
    out_of_time: bool = False  # stopped by train.max_minutes before the last planned step


def train(
    cfg: RunConfig,
    dataset: PreparedDataset,
    *,
    console: Console | None = None,
    dry_run_steps: int | None = None,
    restore_rng: bool = True,
) -> TrainResult:
    """Fine-tune `cfg.model` on `dataset.train`; writes the adapter/model, checkpoints and
    metrics to the run folder. With `dry_run_steps`, only measure speed and memory."""
    console = console or Console(stderr=True)
    tc = cfg.train
    run_dir = cfg.run_dir
    set_seed(tc.seed)
    precision = resolve_precision(tc.precision)
    accelerator = Accelerator(
        mixed_precision="bf16" if precision == "bf16" else "no", cpu=cpu_only()
    )
    main = accelerator.is_main_process
    world = accelerator.num_processes
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            "launch without accelerate's --use_fsdp and set train.fsdp: true instead: "
            "tunewright shards the model itself with torch's FSDP2"
        )
    fsdp = tc.fsdp and world > 1

    # --- setup: model, data, optimiser ---------------------------------------------------
    if (
        tc.activation_checkpointing
    ):  # the memory-lean mode: else the heap keeps freed activations (peak RSS
        release_freed_tensors_to_os()  # 4.9 -> 2.0 GB), at a price in page faults (87 -> 58 tokens/s, benchmark)
    loaded = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    chat = ChatTokenizer(loaded.tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
    pad_id = loaded.tokenizer.pad_token_id
    replay = []
    if (
        tc.general_replay
    ):  # the base's own answers to general chats, generated before any adapter exists
        chats = base_replay(
            loaded.model,
            loaded.tokenizer,
            count=tc.general_replay,
            seed=tc.seed,
            model_name=cfg.model.name,
            cache_dir=run_dir / "data",
        )
        replay = encode_replay(chats, loaded.tokenizer, cfg.data.max_seq_len)
    # shared prefixes run a layer twice per forward: not under activation checkpointing (its
    # layers drop the cache) nor FSDP (each call would gather the layer's shards again)
    data = MicroBatches.build(
        chat,
        dataset.train,
        pad_id,
        packing=tc.packing,
        max_seq_len=cfg.data.max_seq_len,
        extra=replay,
        share_prefix=tc.shared_prefix and not (tc.activation_checkpointing or fsdp),
        label_weighting=tc.label_weighting,
    )
    val_examples = [chat.encode_example(e) for e in dataset.val]

    model = apply_training_method(loaded.model, tc, precision)
    model.train()
    forward = ChunkedLossForward(model)
    if fsdp:  # before the optimiser exists: sharding replaces the parameters with DTensors
        shard_for_fsdp(forward.to(accelerator.device))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}

    # every rank computes the same schedule from the seed; rank r takes its share of each step
    schedule = batch_schedule(data.lengths, tc.batch_size, tc.epochs, tc.seed)
    per_step = tc.grad_accum_steps * world
    total_steps = math.ceil(len(schedule) / per_step)
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    optimizer = make_optimizer(model, trainable, tc)
    warmup_steps = min(tc.lr_warmup_steps, total_steps // 2)
    budget = None
    if tc.max_minutes is not None:  # the schedule runs over the time budget (train/time_budget.py)
        scheduler, budget = budget_scheduler(
            optimizer, tc.lr_schedule, warmup_steps, total_steps, tc.max_minutes
        )
    else:
        scheduler = get_scheduler(
            "constant_with_warmup" if tc.lr_schedule == "constant" else tc.lr_schedule,
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=total_steps,
        )
    # the scheduler stays outside accelerate: it would step once per process, but our step
    # count is already global. Under FSDP the model is already sharded: accelerate would wrap it in DDP
    if fsdp:
        optimizer = accelerator.prepare(optimizer)
    else:
        forward, optimizer = accelerator.prepare(forward, optimizer)

    # --- resume: weights, optimiser, scheduler, RNG and data position ----------------------
    checkpoints = run_dir / "checkpoints"
    start_step, trained_tokens, best_val, evals_without_gain, seconds_before = (
        0,
        0,
        math.inf,
        0,
        0.0,
    )
    if tc.resume and (latest := latest_checkpoint(checkpoints)) is not None:
        state = load_checkpoint(
            latest,
            model,
            optimizer,
            scheduler,
            restore_rng=restore_rng,
            rank=accelerator.process_index,
            sharded=fsdp,
        )
        start_step, trained_tokens = state.step, state.data_state["trained_tokens"]
        best_val = state.metrics.get("best_val_loss", math.inf)
        evals_without_gain = state.data_state.get("evals_without_gain", 0)
        seconds_before = state.data_state.get(
            "train_seconds", 0.0
        )  # counts against train.max_minutes
        console.print(f"resumed from {latest.name} (step {start_step} of {total_steps})")
    if dry_run_steps is not None:
        total_steps = min(
            total_steps, start_step + dry_run_steps + 1
        )  # +1: the first step warms up
    run_dir.mkdir(parents=True, exist_ok=True)
    if main and dry_run_steps is None:
        save_config(cfg, run_dir / "config.yaml")  # export/serve read the run's settings from it
    logger = (
        MetricsLogger(run_dir, cfg.name, cfg.model_dump(mode="json"), tc.report_to)
        if main and dry_run_steps is None
        else None
    )
    if main:
        console.print(
            f"training {cfg.model.name} ({tc.method}, {precision}, {world} process(es)): "
            f"{sum(p.numel() for p in trainable.values()):,} trainable parameters, "
            f"{len(dataset.train)} examples{f' + {len(replay)} general replay' if replay else ''}, {total_steps} steps"
        )

    # --- the loop -------------------------------------------------------------------------
    val_loss, loss_ema, best_state, stopped_early, out_of_time = None, None, None, False, False
    done, elapsed, tokens_per_second = start_step, 0.0, 0.0
    started, timed_from, tokens_at_timing = time.perf_counter(), None, trained_tokens
    with progress_bar(console, disable=not main) as progress:
        task = progress.add_task(
            "train", total=total_steps, completed=start_step, loss=math.nan, lr=0.0, tps=0.0
        )
        for step in range(start_step, total_steps):
            step_batches = schedule[step * per_step : (step + 1) * per_step]
            # normalise by the whole step's trained weight (all ranks, all micro-batches), so
            # accumulation and data parallelism both equal one big batch
            step_weight = sum(data.weight(idx) for idx in step_batches)
            mine = step_batches[accelerator.process_index :: world]
            step_loss = torch.zeros(())
            for indices in mine:
                batch = data.collate(indices)
                with accelerator.autocast():
                    nll_sum, _ = forward(**batch)
                # DDP and FSDP average gradients over ranks; scale so the result is the global sum
                accelerator.backward(nll_sum * world / step_weight)
                step_loss += nll_sum.detach().float() / step_weight
                trained_tokens += data.tokens(indices) * world
            step_loss = float(accelerator.reduce(step_loss, reduction="sum"))
            grad_norm = as_float(
                accelerator.clip_grad_norm_(list(trainable.values()), tc.max_grad_norm or math.inf)
            )
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                # raised before optimizer.step(): weights and checkpoints stay finite
                raise TrainingDivergedError(
                    f"step {step + 1}: loss={step_loss} grad_norm={grad_norm} is not finite; lower train.lr "
                    f"or check the data. The last checkpoint (if any) in {checkpoints} is intact."
                )
            optimizer.step()
            train_seconds = seconds_before + time.perf_counter() - started
            if (
                budget is not None
            ):  # every rank must stop at the same step: the slowest clock decides
                budget.elapsed_seconds = float(
                    accelerator.gather(torch.tensor([train_seconds])).max()
                )
                out_of_time = budget.spent and dry_run_steps is None
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            if timed_from is None:  # time from the end of the first step: it pays one-off costs
                timed_from, tokens_at_timing = time.perf_counter(), trained_tokens
            elapsed = time.perf_counter() - timed_from
            tokens_per_second = (
                (trained_tokens - tokens_at_timing) / elapsed if elapsed > 0 else 0.0
            )
            loss_ema = step_loss if loss_ema is None else 0.9 * loss_ema + 0.1 * step_loss
            lr = scheduler.get_last_lr()[0]
            progress.update(task, advance=1, loss=loss_ema, lr=lr, tps=tokens_per_second)
            done = step + 1
            if logger and (done % tc.log_every_steps == 0 or done == total_steps):
                logger.log(
                    done,
                    train_loss=step_loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens_per_second=tokens_per_second,
                )

            if (
                dry_run_steps is None
                and tc.eval_every_steps
                and done % tc.eval_every_steps == 0
                and val_examples
            ):
                val_loss = evaluate_loss(forward, val_examples, tc.batch_size, pad_id, accelerator)
                if logger:
                    logger.log(done, val_loss=val_loss)
                if val_loss < best_val:
                    best_val, evals_without_gain = val_loss, 0
                    best_state = {k: v.detach().clone() for k, v in trainable.items()}
                else:
                    evals_without_gain += 1
                stopped_early = bool(
                    tc.early_stopping_patience and evals_without_gain >= tc.early_stopping_patience
                )
            if (
                dry_run_steps is None
                and tc.checkpoint_every_steps
                and (done % tc.checkpoint_every_steps == 0 or stopped_early)
            ):
                # collectives, so every rank takes part: each hands over its RNG state and, under
                # FSDP, its shards; rank 0 alone writes
                rngs = gather_rng_states()
                model_state, optimizer_state = (
                    gather_full_state(model, optimizer) if fsdp else (trainable, optimizer)
                )
                if main:
                    save_checkpoint(
                        checkpoints,
                        step=done,
                        model_state=model_state,
                        optimizer=optimizer_state,
                        scheduler=scheduler,
                        rng=rngs,
                        data_state={
                            "trained_tokens": trained_tokens,
                            "evals_without_gain": evals_without_gain,
                            "train_seconds": train_seconds,
                        },
                        metrics={"val_loss": val_loss, "best_val_loss": best_val},
                        keep_last=tc.keep_checkpoints,
                        best_metric_key="val_loss" if tc.eval_every_steps else None,
                    )
                accelerator.wait_for_everyone()
            if stopped_early:
                console.print(
                    f"early stopping at step {done}: no better val loss in {evals_without_gain} validations"
                )
                break
            if out_of_time:
                console.print(
                    f"time budget of {tc.max_minutes:g} min spent at step {done} of {total_steps}"
                )
                break

    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    steps_done = done
    result = TrainResult(
        output_dir=None,
        steps=steps_done,
        train_loss=loss_ema if loss_ema is not None else math.nan,
        val_loss=None,
        trained_tokens=trained_tokens,
        seconds=seconds,
        tokens_per_second=tokens_per_second,
        precision=precision,
        peak_memory_mb=peak_mb,
        planned_steps=total_steps,
        stopped_early=stopped_early,
        out_of_time=out_of_time,
    )
    if dry_run_steps is not None:
        planned = (
            math.ceil(len(schedule) / per_step)
            if tc.max_steps is None
            else min(tc.max_steps, math.ceil(len(schedule) / per_step))
        )
        # steps differ in length (batches are length-grouped, then shuffled), so a few steps' mean
        # time misjudges the run (by 11% on Banking77): time per token, times each planned step's tokens
        step_tokens = [
            sum(data.tokens(b) for b in schedule[s * per_step : (s + 1) * per_step])
            for s in range(planned)
        ]
        timed_tokens = sum(step_tokens[start_step + 1 : steps_done])
        seconds_per_token = elapsed / max(timed_tokens, 1)
        result.planned_steps, result.planned_step_tokens = planned, step_tokens
        result.eta_seconds = seconds_per_token * sum(step_tokens)
        if tc.max_minutes is not None:
            result.eta_seconds = min(result.eta_seconds, tc.max_minutes * 60)
        return result

    if best_state is not None and best_val < (val_loss if val_loss is not None else math.inf):
        with torch.no_grad():  # keep the best weights seen, not the last ones
            for name, value in best_state.items():
                trainable[name].copy_(value)
    if val_examples:
        result.val_loss = evaluate_loss(forward, val_examples, tc.batch_size, pad_id, accelerator)
        if logger:
            logger.log(steps_done, val_loss=result.val_loss)
    if logger:
        logger.close()
    gathered = full_state_dict(model) if fsdp else None  # collective: every rank takes part
    if main:
        result.output_dir = save_trained(
            accelerator.unwrap_model(forward).model,
            loaded.tokenizer,
            run_dir,
            tc.method,
            state_dict=gathered,
        )
    accelerator.wait_for_everyone()
    return result
