"""The training loop, top to bottom: `setup` (train/setup.py) builds the run, `fit` takes the
optimiser steps (forward, backward, accumulate, clip, step; maybe validate; maybe checkpoint;
log), `finish` keeps the best weights, validates and saves. `dry_run` times a few steps of `fit`
instead of finishing.

`accelerate` handles device, precision and distribution (launch with `accelerate launch` or
`torchrun` for DDP/FSDP); it never owns the control flow. LoRA vs full fine-tuning is a flag
(which parameters train), not a second loop. Every mode (packing, shared prefix, label weighting,
frozen-layer cache, DDP or FSDP, dry run) and the objective (SFT, or DPO/ORPO on preference pairs:
train/preference.py) is chosen once, in `setup`; the loop never asks which one it runs.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tunewright.config import RunConfig
from tunewright.dataset.prepared import PreparedDataset
from tunewright.errors import TrainingDivergedError
from tunewright.runs import save_trained, write_training_summary
from tunewright.train.checkpoint import gather_rng_states, save_checkpoint
from tunewright.train.parallel import as_float
from tunewright.train.setup import Training, setup
from tunewright.train.state import TrainState
from tunewright.train.steps import evaluate_loss, progress_bar


@dataclass
class TrainResult:
    # the adapter folder (LoRA) or the full model folder; None for a dry run
    output_dir: Path | None
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

    def summary(self) -> dict[str, Any]:
        """What `training.json` holds and the report's training section shows."""
        return {
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "stopped_by_time_budget": self.out_of_time,
            "seconds": round(self.seconds, 1),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "final_train_loss": round(self.train_loss, 4),
            "val_loss": None if self.val_loss is None else round(self.val_loss, 4),
            "precision": self.precision,
        }


@dataclass
class Fitted:
    """How `fit` went, beyond the `TrainState` it advanced."""

    seconds: float = 0.0  # this process's time in the loop
    timed_seconds: float = 0.0  # from the end of the first step, which pays one-off costs
    tokens_per_second: float = 0.0  # over the timed seconds
    best_weights: dict[str, torch.Tensor] | None = None  # at the lowest val loss, in memory
    stopped_early: bool = False
    out_of_time: bool = False


def train(
    cfg: RunConfig,
    dataset: PreparedDataset,
    *,
    console: Console | None = None,
    dry_run_steps: int | None = None,
    restore_rng: bool = True,
) -> TrainResult:
    """Fine-tune `cfg.model` on `dataset.train`; writes the adapter/model, checkpoints, metrics
    and `training.json` to the run folder. With `dry_run_steps`, only measure speed and memory."""
    console = console or Console(stderr=True)
    run, state = setup(
        cfg, dataset, console=console, restore_rng=restore_rng, dry_run_steps=dry_run_steps
    )
    if dry_run_steps is not None:
        return dry_run(run, state, console)
    fitted = fit(run, state, console)
    return finish(run, state, fitted)


# --- the loop -------------------------------------------------------------------------------


def fit(run: Training, state: TrainState, console: Console) -> Fitted:
    """Optimiser steps from `state.step` to `run.last_step`, advancing `state` in place; stops
    early on `train.early_stopping_patience` or when `train.max_minutes` is spent."""
    accelerator, tc, fitted = run.accelerator, run.cfg.train, Fitted()
    world, rank = accelerator.num_processes, accelerator.process_index
    started, seconds_before = time.perf_counter(), state.train_seconds
    timed_from, tokens_at_timing = None, state.trained_tokens
    last_own: list[int] | None = None  # this rank's latest micro-batch
    with progress_bar(console, disable=not accelerator.is_main_process) as progress:
        task = progress.add_task(
            "train", total=run.last_step, completed=state.step, loss=math.nan, lr=0.0, tps=0.0
        )
        for step in range(state.step, run.last_step):
            step_batches = run.step_batches(step)
            # normalise by the whole step's trained weight (all ranks, all micro-batches), so
            # accumulation and data parallelism both equal one big batch
            step_weight = sum(run.data.weight(indices) for indices in step_batches)
            step_loss = torch.zeros(())
            own = step_batches[rank::world]
            # A short last step can leave a rank without a micro-batch, yet DDP and FSDP need
            # every rank in each gradient all-reduce (else the others wait for ever): it runs
            # its previous micro-batch again with weight 0, changing nothing.
            for indices in own or [last_own or step_batches[0]]:
                with accelerator.autocast():
                    nll_sum, _ = run.forward(**run.data.collate(indices))
                # DDP and FSDP average gradients over ranks; scale so the result is the global sum
                share = world / step_weight if own else 0.0
                accelerator.backward(nll_sum * share)
                step_loss += nll_sum.detach().float() * share / world
                last_own = indices
            state.trained_tokens += sum(run.data.tokens(indices) for indices in step_batches)
            step_loss = float(accelerator.reduce(step_loss, reduction="sum"))
            objective_metrics = run.objective_metrics()  # e.g. DPO's reward margin; {} for SFT
            max_norm = tc.max_grad_norm or math.inf
            grad_norm = as_float(
                accelerator.clip_grad_norm_(list(run.trainable.values()), max_norm)
            )
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                # raised before optimizer.step(): weights and checkpoints stay finite
                raise _diverged(run, step + 1, step_loss, grad_norm)
            run.optimizer.step()
            state.train_seconds = seconds_before + time.perf_counter() - started
            # every rank must stop at the same step: the slowest clock decides
            if run.budget is not None:
                spent = accelerator.gather(torch.tensor([state.train_seconds])).max()
                run.budget.elapsed_seconds = float(spent)
                fitted.out_of_time = run.budget.spent and run.stop_when_out_of_time
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.step = step + 1

            if timed_from is None:  # time from the end of the first step: it pays one-off costs
                timed_from, tokens_at_timing = time.perf_counter(), state.trained_tokens
            fitted.timed_seconds = elapsed = time.perf_counter() - timed_from
            timed_tokens = state.trained_tokens - tokens_at_timing
            fitted.tokens_per_second = timed_tokens / elapsed if elapsed > 0 else 0.0
            ema = state.train_loss_ema
            state.train_loss_ema = step_loss if ema is None else 0.9 * ema + 0.1 * step_loss
            lr = run.scheduler.get_last_lr()[0]
            progress.update(
                task, advance=1, loss=state.train_loss_ema, lr=lr, tps=fitted.tokens_per_second
            )
            if run.logger and (state.step % tc.log_every_steps == 0 or state.step == run.last_step):
                run.logger.log(
                    state.step,
                    train_loss=step_loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens_per_second=fitted.tokens_per_second,
                    planned_steps=run.planned_steps,  # lets a watcher (the studio) give an ETA
                    **objective_metrics,
                )

            if run.eval_every_steps and state.step % run.eval_every_steps == 0 and run.val_data:
                if validate(run, state):
                    fitted.best_weights = {k: v.detach().clone() for k, v in run.trainable.items()}
                patience = tc.early_stopping_patience
                fitted.stopped_early = bool(patience and state.evals_without_gain >= patience)
            every = run.checkpoint_every_steps
            if every and (state.step % every == 0 or fitted.stopped_early):
                save_state(run, state)
            if fitted.stopped_early or fitted.out_of_time:
                console.print(_why_stopped(run, state, fitted))
                break
    fitted.seconds = time.perf_counter() - started
    return fitted


def _diverged(run: Training, step: int, loss: float, grad_norm: float) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"step {step}: loss={loss} grad_norm={grad_norm} is not finite; lower train.lr or check "
        f"the data. The last checkpoint (if any) in {run.checkpoint_dir} is intact."
    )


def _why_stopped(run: Training, state: TrainState, fitted: Fitted) -> str:
    if fitted.stopped_early:
        return (
            f"early stopping at step {state.step}: no better val loss in "
            f"{state.evals_without_gain} validations"
        )
    return (
        f"time budget of {run.cfg.train.max_minutes:g} min spent at step {state.step} of "
        f"{run.last_step}"
    )


def validate(run: Training, state: TrainState) -> bool:
    """The validation loss into `state`; True when it is the best so far."""
    state.val_loss = _val_loss(run, state.step)
    if state.val_loss < state.best_val_loss:
        state.best_val_loss, state.evals_without_gain = state.val_loss, 0
        return True
    state.evals_without_gain += 1
    return False


def _val_loss(run: Training, step: int) -> float:
    """The loss on the validation split, logged with the objective's metrics there."""
    val_loss = evaluate_loss(
        run.forward, run.val_data.batches(run.cfg.train.batch_size), run.accelerator
    )
    metrics = {f"val_{key}": value for key, value in run.objective_metrics().items()}
    if run.logger:
        run.logger.log(step, val_loss=val_loss, **metrics)
    return val_loss


def save_state(run: Training, state: TrainState) -> None:
    """Checkpoint the weights, optimiser, scheduler, every rank's RNG and `state`. Collective,
    so every rank calls it: each hands over its RNG state and, under FSDP, its shards; rank 0
    alone writes. Only at an optimiser-step boundary, or a resume double-counts accumulation."""
    rngs = gather_rng_states()
    model_state, optimizer_state = run.parallelism.checkpoint_state(
        run.model, run.trainable, run.optimizer
    )
    if run.accelerator.is_main_process:
        save_checkpoint(
            run.checkpoint_dir,
            **state.checkpoint_fields(),
            model_state=model_state,
            optimizer=optimizer_state,
            scheduler=run.scheduler,
            rng=rngs,
            keep_last=run.cfg.train.keep_checkpoints,
            best_metric_key="val_loss" if run.cfg.train.eval_every_steps else None,
        )
    run.accelerator.wait_for_everyone()


# --- the end of a run -----------------------------------------------------------------------


def finish(run: Training, state: TrainState, fitted: Fitted) -> TrainResult:
    """Keep the best weights seen (not the last ones), validate them, save the adapter or model,
    and write `training.json`."""
    result = _result(run, state, fitted)
    last_val = state.val_loss if state.val_loss is not None else math.inf
    if fitted.best_weights is not None and state.best_val_loss < last_val:
        with torch.no_grad():
            for name, value in fitted.best_weights.items():
                run.trainable[name].copy_(value)
    if run.val_data:
        result.val_loss = _val_loss(run, state.step)
    if run.logger:
        run.logger.close()
    whole = run.parallelism.whole_state_dict(run.model)  # collective: every rank takes part
    if run.accelerator.is_main_process:
        result.output_dir = save_trained(
            run.accelerator.unwrap_model(run.forward).model,
            run.tokenizer,
            run.cfg.run_dir,
            run.cfg.train.method,
            state_dict=whole,
        )
        write_training_summary(run.cfg.run_dir, result.summary())
    run.accelerator.wait_for_everyone()
    return result


def dry_run(run: Training, state: TrainState, console: Console) -> TrainResult:
    """Time the few steps `setup` planned (after a warm-up one) and estimate the whole run from
    them; writes nothing. Steps differ in length (batches are length-grouped, then shuffled), so
    a few steps' mean time misjudges the run: the estimate is the time per token times every
    planned step's tokens (measured: docs/results.md)."""
    first_step = state.step
    fitted = fit(run, state, console)
    result = _result(run, state, fitted)
    step_tokens = [
        sum(run.data.tokens(indices) for indices in run.step_batches(step))
        for step in range(run.planned_steps)
    ]
    seconds_per_token = fitted.timed_seconds / max(sum(step_tokens[first_step + 1 : state.step]), 1)
    result.planned_step_tokens = step_tokens
    result.eta_seconds = seconds_per_token * sum(step_tokens)
    if run.cfg.train.max_minutes is not None:
        result.eta_seconds = min(result.eta_seconds, run.cfg.train.max_minutes * 60)
    return result


def _result(run: Training, state: TrainState, fitted: Fitted) -> TrainResult:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return TrainResult(
        output_dir=None,
        steps=state.step,
        train_loss=state.train_loss_ema if state.train_loss_ema is not None else math.nan,
        val_loss=None,
        trained_tokens=state.trained_tokens,
        seconds=fitted.seconds,
        tokens_per_second=fitted.tokens_per_second,
        precision=run.precision,
        peak_memory_mb=peak_mb,
        planned_steps=run.planned_steps,
        stopped_early=fitted.stopped_early,
        out_of_time=fitted.out_of_time,
    )
