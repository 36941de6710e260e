"""Everything one training run needs, built once: `setup` loads the model and the data, makes
the optimiser and the learning-rate schedule, chooses every mode (the objective: SFT or
preference pairs; packing, shared prefix, label weighting, frozen-layer cache, DDP or FSDP, dry
run) and restores the newest checkpoint's state under `train.resume`. `train/loop.py` then runs
what it built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedTokenizerBase, get_scheduler

from tunewright.config import RunConfig, TrainConfig, save_config
from tunewright.dataset.prepared import PreparedDataset
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.hardware import cpu_only, resolve_precision
from tunewright.models import load_model
from tunewright.train.batching import batch_schedule
from tunewright.train.checkpoint import latest_checkpoint, load_checkpoint
from tunewright.train.frozen_cache import choose_forward
from tunewright.train.host_memory import release_freed_tensors_to_os
from tunewright.train.metrics_log import MetricsLogger
from tunewright.train.micro_batches import MicroBatches
from tunewright.train.model_setup import apply_training_method, make_optimizer
from tunewright.train.pairs import PairBatches, preference_data, with_reference
from tunewright.train.parallel import Parallelism, choose_parallelism
from tunewright.train.preference import preference_forward
from tunewright.train.replay import base_replay, encode_replay, repeated_to_share
from tunewright.train.state import TrainState
from tunewright.train.steps import PlainValidation
from tunewright.train.teacher import base_distributions
from tunewright.train.time_budget import BudgetProgress, budget_scheduler


@dataclass(frozen=True)
class Training:
    """What `setup` builds for `fit` and `finish`: one run's model, data, optimiser and plan."""

    cfg: RunConfig
    accelerator: Accelerator
    parallelism: Parallelism  # DDP (or one process) vs FSDP
    model: nn.Module  # the model being trained (peft-wrapped under LoRA)
    forward: nn.Module  # the model and the chunked loss, as accelerate prepared them
    trainable: dict[str, nn.Parameter]
    optimizer: Optimizer
    scheduler: LRScheduler
    budget: BudgetProgress | None  # train.max_minutes: the scheduler decays over the time spent
    tokenizer: PreTrainedTokenizerBase
    precision: str
    data: MicroBatches | PairBatches  # the training units: examples (or packed rows), or pairs
    val_data: PlainValidation | PairBatches
    # the objective's own metrics since the last call (DPO's reward margin, ...; {} for SFT).
    # Collective: every rank calls it
    objective_metrics: Callable[[], dict[str, float]]
    schedule: list[list[int]]  # every micro-batch of the run, in order, for all ranks at once
    micro_batches_per_step: int  # over all ranks
    planned_steps: int
    # the plan; a dry run stops after a few steps, and neither validates nor checkpoints
    last_step: int
    eval_every_steps: int | None
    checkpoint_every_steps: int | None
    stop_when_out_of_time: bool
    logger: MetricsLogger | None  # main process only, and not in a dry run

    @property
    def checkpoint_dir(self) -> Path:
        return self.cfg.run_dir / "checkpoints"

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def step_batches(self, step: int) -> list[list[int]]:
        """The micro-batches of optimiser step `step`, all ranks' (rank r takes every
        world-th one from the r-th): every rank computes the same schedule from the seed."""
        n = self.micro_batches_per_step
        return self.schedule[step * n : (step + 1) * n]


def setup(
    cfg: RunConfig,
    dataset: PreparedDataset,
    *,
    console: Console,
    restore_rng: bool = True,
    dry_run_steps: int | None = None,
) -> tuple[Training, TrainState]:
    """Build the model, data, optimiser and scheduler, and restore the newest checkpoint's state
    under `train.resume`. With `dry_run_steps`, plan that many steps after a warm-up one."""
    tc = cfg.train
    set_seed(tc.seed)
    precision = resolve_precision(tc.precision)
    mixed_precision = "bf16" if precision == "bf16" else "no"
    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        # accelerate keeps the first Accelerator's precision for the whole process; a process
        # that trains twice (scaling sub-runs, a notebook, the test suite) would silently train
        # the second run in the first one's. Reset only that state: the process group stays.
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu_only())
    main, world = accelerator.is_main_process, accelerator.num_processes
    parallelism = choose_parallelism(accelerator, tc.fsdp)
    if tc.activation_checkpointing:
        # the memory-lean mode: else the heap keeps freed activations resident; returning them
        # costs page faults, so only here (measured: docs/results.md)
        release_freed_tensors_to_os()
    loaded = load_model(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    chat = ChatTokenizer(loaded.tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
    replay, teachers, replay_note = [], [], ""
    if tc.general_replay:  # the base's own answers to general chats, before any adapter exists
        chats = base_replay(
            loaded.model,
            loaded.tokenizer,
            count=tc.general_replay,
            seed=tc.seed,
            model_name=cfg.model.name,
            cache_dir=cfg.run_dir / "data",
        )
        encoded = encode_replay(
            chats, loaded.tokenizer, cfg.data.max_seq_len, tc.general_replay_answer_tokens
        )
        if tc.general_replay_kl:  # the base's distributions, before the adapter exists
            teachers = repeated_to_share(
                base_distributions(loaded.model, encoded, loaded.tokenizer.pad_token_id),
                len(dataset.train),
                tc.general_replay_share,
            )
        replay = repeated_to_share(encoded, len(dataset.train), tc.general_replay_share)
        replay_note = f" + {len(replay)} general replay rows ({len(chats)} chats)"
    # a shared prefix runs a layer twice per forward: not under activation checkpointing (its
    # layers drop the cache) nor FSDP (each call would gather the layer's shards again)
    share_prefix = tc.shared_prefix and not (tc.activation_checkpointing or parallelism.sharded)
    if tc.objective == "sft":
        data = MicroBatches.build(
            chat,
            dataset.train,
            loaded.tokenizer.pad_token_id,
            packing=tc.packing,
            max_seq_len=cfg.data.max_seq_len,
            extra=replay,
            extra_weight=tc.general_replay_weight,
            extra_teachers=teachers,
            teacher_weight=tc.general_replay_kl,
            share_prefix=share_prefix,
            label_weighting=tc.label_weighting,
        )
        val_data = PlainValidation(
            [chat.encode_example(e) for e in dataset.val], loaded.tokenizer.pad_token_id
        )
    else:
        data, val_data = preference_data(
            chat, dataset, tc.objective, loaded.tokenizer.pad_token_id, share_prefix=share_prefix
        )

    schedule = batch_schedule(data.lengths, tc.batch_size, tc.epochs, tc.seed)
    per_step = tc.grad_accum_steps * world
    planned_steps = math.ceil(len(schedule) / per_step)
    if tc.max_steps is not None:
        planned_steps = min(planned_steps, tc.max_steps)

    model = apply_training_method(loaded.model, tc, precision)
    model.train()
    if tc.objective == "sft":
        # LoRA on the top layers only: later epochs start from the frozen layers' cached output
        forward, cache_note = choose_forward(
            model,
            tc,
            data,
            _own_micro_batches(schedule[: planned_steps * per_step], per_step, accelerator),
            pad_id=loaded.tokenizer.pad_token_id,
            sharded=parallelism.sharded,
            processes=world,
        )

        def objective_metrics() -> dict[str, float]:
            return {}
    else:
        if tc.objective == "dpo":  # the reference: the model as it is before training
            data, val_data = with_reference(
                model.to(accelerator.device),
                (data, val_data),
                loaded.tokenizer.pad_token_id,
                accelerator.autocast,
            )
        forward, stats, cache_note = preference_forward(model, tc)
        objective_metrics = partial(stats.take, accelerator)
    parallelism.shard(forward, accelerator.device)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, trainable, tc)
    scheduler, budget = _lr_scheduler(optimizer, tc, planned_steps)
    forward, optimizer = parallelism.prepare(accelerator, forward, optimizer)

    checkpoint_dir = cfg.run_dir / "checkpoints"
    state = TrainState()
    if tc.resume and (latest := latest_checkpoint(checkpoint_dir)) is not None:
        saved = load_checkpoint(
            latest,
            model,
            optimizer,
            scheduler,
            restore_rng=restore_rng,
            rank=accelerator.process_index,
            sharded=parallelism.sharded,
        )
        state = TrainState.from_checkpoint(saved)
        console.print(f"resumed from {latest.name} (step {state.step} of {planned_steps})")
    measuring = dry_run_steps is not None
    last_step = (
        min(planned_steps, state.step + dry_run_steps + 1)  # +1: the first step warms up
        if measuring
        else planned_steps
    )
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if main and not measuring:
        save_config(cfg, cfg.run_dir / "config.yaml")  # export/serve read the run's settings
    logger = (
        MetricsLogger(cfg.run_dir, cfg.name, cfg.model_dump(mode="json"), tc.report_to)
        if main and not measuring
        else None
    )
    if main:
        console.print(
            f"training {cfg.model.name} ({tc.method}, {precision}, {world} process(es)): "
            f"{sum(p.numel() for p in trainable.values()):,} trainable parameters, "
            f"{len(dataset.train)} examples{replay_note}, {last_step} steps"
        )
        if cache_note:
            console.print(cache_note)
    run = Training(
        cfg=cfg,
        accelerator=accelerator,
        parallelism=parallelism,
        model=model,
        forward=forward,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        budget=budget,
        tokenizer=loaded.tokenizer,
        precision=precision,
        data=data,
        val_data=val_data,
        objective_metrics=objective_metrics,
        schedule=schedule,
        micro_batches_per_step=per_step,
        planned_steps=planned_steps,
        last_step=last_step,
        eval_every_steps=None if measuring else tc.eval_every_steps,
        checkpoint_every_steps=None if measuring else tc.checkpoint_every_steps,
        stop_when_out_of_time=not measuring,
        logger=logger,
    )
    return run, state


def _own_micro_batches(
    schedule: list[list[int]], per_step: int, accelerator: Accelerator
) -> list[list[int]]:
    """The micro-batches this process runs, in order: of each step's, every world-th from its
    rank's (as `fit` takes them from `Training.step_batches`)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    return [
        batch
        for start in range(0, len(schedule), per_step)
        for batch in schedule[start : start + per_step][rank::world]
    ]


def _lr_scheduler(
    optimizer: Optimizer, tc: TrainConfig, planned_steps: int
) -> tuple[LRScheduler, BudgetProgress | None]:
    """Warm-up, then decay over the planned steps, or over the time budget (train/time_budget.py)."""
    warmup_steps = min(tc.lr_warmup_steps, planned_steps // 2)
    if tc.max_minutes is not None:
        return budget_scheduler(
            optimizer, tc.lr_schedule, warmup_steps, planned_steps, tc.max_minutes
        )
    scheduler = get_scheduler(
        "constant_with_warmup" if tc.lr_schedule == "constant" else tc.lr_schedule,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=planned_steps,
    )
    return scheduler, None
