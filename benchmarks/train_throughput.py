"""Training throughput: tunewright's loop vs TRL's SFTTrainer + PEFT, same data, same LoRA.

Run: python benchmarks/train_throughput.py [--model smollm2-135m] [--steps 4] [--budget 240]
     [--only ours,ours-ckpt,trl-default,trl-fast] [--profile]

Every configuration runs in its own subprocess, so each peak RSS is that of a fresh process
(model load included), and they never share threads. Each runs one warm-up optimiser step and
then `--steps` timed steps; a TRL run stops sooner when `--budget` seconds of timed steps are
spent (its bf16 default is very slow on CPUs without AMX). Trained tokens/s counts the
non-padding tokens that went through forward and backward in the timed steps.

Configurations (LoRA r=16, alpha=32, all linear layers of all layers, batch 8, max length 512):
- ours          tunewright's loop at its defaults (`train.precision: auto`)
- ours-ckpt     the same with `train.activation_checkpointing: true` (less memory, more compute)
- ours-packed   the same as `ours` with `train.packing: true` (not run unless named in --only)
- trl-default   SFTTrainer with SFTConfig at its defaults (bf16 autocast, activation
                checkpointing on) plus `use_cpu=True`, without which it refuses to start here
- trl-fast      the fastest TRL setting found on a CPU: fp32 (bf16=False), activation
                checkpointing off

The objectives differ in one documented way: TRL's default puts the loss on every token of a
conversation; tunewright puts it on the assistant tokens only (what SFT should do), and so
projects only those positions through the LM head. Both count the same processed tokens.

MFU: model FLOPs per trained token are 2N forward + 2N backward through the frozen weights
(LoRA trains no base weight, so there is no weight-gradient product), N = all parameters
except the embedding table (the tied LM head is counted). It is printed against the bf16 and
the fp32 matmul rates measured at the start of this run, on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("ours", "ours-ckpt", "ours-packed", "trl-default", "trl-fast")
DEFAULT_RUN = ("ours", "ours-ckpt", "trl-default", "trl-fast")
BATCH, MAX_LEN, N_EXAMPLES, SEED = 8, 512, 256, 0
WORDS_CSV = Path(__file__).parents[1] / "recipes" / "data" / "banking77" / "train.csv"


def synthetic_chats(tokenizer) -> list[list[dict]]:
    """Fixed chat examples of 64-512 tokens: banking questions as the user turn and a longer
    assistant answer, lengths spread uniformly, built from a seeded RNG."""
    import csv

    with WORDS_CSV.open(encoding="utf-8") as f:
        sentences = [row["text"] for row in csv.DictReader(f)]
    rng = random.Random(SEED)
    chats = []
    for _ in range(N_EXAMPLES):
        target = rng.randint(64, MAX_LEN)
        user = " ".join(rng.sample(sentences, 2))
        answer_parts: list[str] = []
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ""}]
        while True:
            candidate = answer_parts + [rng.choice(sentences)]
            longer = [messages[0], {"role": "assistant", "content": " ".join(candidate)}]
            length = len(tokenizer.apply_chat_template(longer, tokenize=True, return_dict=False))
            if length > min(target, MAX_LEN - 16):  # 16 tokens of slack for template differences
                break
            answer_parts, messages = candidate, longer
        chats.append(messages)
    return chats


# --- workers (each in its own process) ---------------------------------------------------------


def run_ours(model_name: str, steps: int, packed: bool, checkpointing: bool, profile: bool) -> dict:
    from tunewright.config import RunConfig
    from tunewright.dataset.example import Example, Message
    from tunewright.dataset.prepared import PreparedDataset
    from tunewright.models import load_tokenizer
    from tunewright.train.loop import train

    tokenizer = load_tokenizer(model_name)
    examples = [
        Example(
            messages=tuple(Message(m["role"], m["content"]) for m in chat), source=f"synthetic:{i}"
        )
        for i, chat in enumerate(synthetic_chats(tokenizer))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.model_validate(
            {
                "name": "bench",
                "output_dir": tmp,
                "model": {"name": model_name},
                "data": {
                    "train_files": ["unused.jsonl"],
                    "max_seq_len": MAX_LEN,
                    "system_prompt": None,
                },
                "train": {
                    "method": "lora",
                    "lora_r": 16,
                    "lora_alpha": 32,
                    "batch_size": BATCH,
                    "packing": packed,
                    "activation_checkpointing": checkpointing,
                    "lr": 2e-4,
                    "log_every_steps": 1000,
                },
            }
        )
        dataset = PreparedDataset(folder=Path(tmp), train=examples, val=[], test=[], labels=None)
        if profile:
            return profile_ours(cfg, dataset)
        result = train(cfg, dataset, dry_run_steps=steps)
    return {
        "tokens_per_second": result.tokens_per_second,
        "timed_steps": result.steps - 1,
        "precision": result.precision,
        "trained_tokens": result.trained_tokens,
    }


def profile_ours(cfg, dataset) -> dict:
    """One optimiser step as the loop takes it (same pieces, same order), under torch.profiler,
    after a warm-up step. The loop itself has no profiling hook, so the step is rebuilt here."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunewright.dataset.tokenize import ChatTokenizer
    from tunewright.hardware import resolve_precision
    from tunewright.models import load_model
    from tunewright.train.batching import batch_schedule
    from tunewright.train.micro_batches import MicroBatches
    from tunewright.train.model_setup import ChunkedLossForward, apply_training_method

    precision = resolve_precision(cfg.train.precision)
    loaded = load_model(cfg.model.name)
    chat = ChatTokenizer(loaded.tokenizer, cfg.data.system_prompt, cfg.data.max_seq_len)
    data = MicroBatches.build(
        chat,
        dataset.train,
        loaded.tokenizer.pad_token_id,
        packing=False,
        max_seq_len=cfg.data.max_seq_len,
    )
    model = apply_training_method(loaded.model, cfg.train, precision)
    forward = ChunkedLossForward(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr)
    schedule = batch_schedule(data.lengths, cfg.train.batch_size, 1.0, cfg.train.seed)

    def step(indices):
        batch = data.collate(indices)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            nll_sum, _ = forward(**batch)
        (nll_sum / data.weight(indices)).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return data.tokens(indices)

    step(schedule[0])
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tokens = step(schedule[1])
    seconds = time.perf_counter() - start
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    return {"profile": table, "profiled_seconds": seconds, "tokens": tokens, "precision": precision}


def run_trl(model_name: str, steps: int, budget: float, fast: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunewright.models import load_model

    loaded = load_model(model_name)
    chats = synthetic_chats(loaded.tokenizer)
    kwargs = {"bf16": False, "gradient_checkpointing": False} if fast else {}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            per_device_train_batch_size=BATCH,
            max_length=MAX_LEN,
            max_steps=steps + 1,
            save_strategy="no",
            report_to=[],
            logging_steps=1000,
            seed=SEED,
            dataloader_num_workers=0,
            use_cpu=True,  # without it TRL's bf16 default refuses to start on a machine with no GPU
            **kwargs,
        )
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(
            model=loaded.model,
            args=args,
            train_dataset=Dataset.from_list([{"messages": c} for c in chats]),
            processing_class=loaded.tokenizer,
            peft_config=lora,
        )
        # count non-padding tokens per collated batch: batches are consumed in collation order
        batch_tokens: list[int] = []
        collator = trainer.data_collator

        def counting_collator(features):
            batch = collator(features)
            batch_tokens.append(
                int(batch["attention_mask"].sum())
                if "attention_mask" in batch
                else int(batch["input_ids"].numel())
            )
            if len(batch_tokens) == 1:  # lets the parent state a bound if no step ever finishes
                print(f"FIRST_BATCH_TOKENS {batch_tokens[0]} {time.perf_counter()}", flush=True)
            return batch

        trainer.data_collator = counting_collator
        timer = _StepTimer(budget, TrainerCallback)
        trainer.add_callback(timer.callback)
        trainer.train()
    timed = len(timer.ends) - 1
    tokens = sum(batch_tokens[1 : 1 + timed])
    seconds = timer.ends[-1] - timer.ends[0] if timed > 0 else float("nan")
    return {
        "tokens_per_second": tokens / seconds if timed > 0 else 0.0,
        "timed_steps": timed,
        "precision": "bf16 autocast" if args.bf16 else "fp32",
        "trained_tokens": tokens,
        "gradient_checkpointing": bool(args.gradient_checkpointing),
    }


class _StepTimer:
    """Records the end time of every optimiser step; stops training when the budget is spent."""

    def __init__(self, budget: float, base):
        self.ends: list[float] = []
        timer = self

        class Callback(base):
            def on_step_end(self, args, state, control, **kwargs):
                timer.ends.append(time.perf_counter())
                if len(timer.ends) > 2 and timer.ends[-1] - timer.ends[0] > budget:
                    control.should_training_stop = True
                return control

        self.callback = Callback()


# --- the parent: matmul rates, run every worker, print the table --------------------------------


def matmul_rates() -> dict[str, float]:
    """GFLOP/s of a 2048x576 @ 576x1536 product (an MLP projection of this model), median of 5."""
    import torch

    rates = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        a @ b
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        rates[str(dtype).removeprefix("torch.")] = 2 * 2048 * 576 * 1536 / sorted(times)[2] / 1e9
    return rates


def flops_per_token(model_name: str) -> float:
    from tunewright.models import load_model

    model = load_model(model_name).model
    embedding = model.get_input_embeddings().weight.numel()
    return 4.0 * (
        sum(p.numel() for p in model.parameters()) - embedding + model.lm_head.weight.numel()
    )


def worker(args) -> None:
    if args.worker.startswith("ours"):
        out = run_ours(
            args.model,
            args.steps,
            args.worker == "ours-packed",
            args.worker == "ours-ckpt",
            args.profile,
        )
    else:
        out = run_trl(args.model, args.steps, args.budget, fast=args.worker == "trl-fast")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def peak_rss_of(pid: int) -> float:
    """Peak resident memory of a live process so far, in MB (Linux: VmHWM in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report_timeout(name: str, stdout: str, seconds: float, peak_mb: float) -> None:
    first = next(
        (l.split() for l in stdout.splitlines() if l.startswith("FIRST_BATCH_TOKENS ")), None
    )
    if first is None:
        print(
            f"{name}: no result within {seconds:.0f} s (did not reach its first batch); peak RSS {peak_mb:.0f} MB"
        )
        return
    # the step began when its batch was collated (perf_counter is CLOCK_MONOTONIC: one clock
    # for all processes on Linux), so it has run at least this long without finishing
    running = time.perf_counter() - float(first[2])
    print(
        f"{name}: its first optimiser step ({first[1]} tokens) had not finished {running:.0f} s after its "
        f"batch was ready: fewer than {int(first[1]) / running:.2f} tokens/s; peak RSS so far {peak_mb:.0f} MB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--steps", type=int, default=4, help="timed optimiser steps per configuration"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=240.0,
        help="seconds of timed steps at most, per TRL configuration",
    )
    parser.add_argument("--only", default=",".join(DEFAULT_RUN))
    parser.add_argument(
        "--profile", action="store_true", help="print a profile of one step of our loop"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds a configuration may run in all; a TRL run that has not finished its "
        "first step by then is reported as a bound (fewer than first-batch tokens / time)",
    )
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"AMX={torch.cpu._is_amx_tile_supported()} AVX512-bf16={torch.cpu._is_avx512_bf16_supported()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rates = matmul_rates()
    print(
        f"matmul rate (2048x576 @ 576x1536): bf16 {rates['bfloat16']:.1f} GFLOP/s, fp32 {rates['float32']:.1f} GFLOP/s"
    )
    per_token = flops_per_token(args.model)
    results = {}
    for name in args.only.split(","):
        command = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--model",
            args.model,
            "--steps",
            str(args.steps),
            "--budget",
            str(args.budget),
        ] + (["--profile"] if args.profile else [])
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            peak_mb = peak_rss_of(proc.pid)  # read before the kill: /proc forgets a dead process
            proc.kill()
            stdout, _ = proc.communicate()
            report_timeout(name, stdout, args.timeout, peak_mb)
            continue
        line = next((l for l in stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name}: FAILED (exit {proc.returncode})\n{stderr[-3000:]}")
            continue
        results[name] = json.loads(line.removeprefix("RESULT "))
        results[name]["wall_s"] = time.perf_counter() - started
        if args.profile and "profile" in results[name]:
            r = results[name]
            print(
                f"profile of one optimiser step of our loop ({r['precision']}, {r['tokens']} tokens, "
                f"{r['profiled_seconds']:.1f} s wall under the profiler):"
            )
            print(results[name]["profile"])
            return
        print(f"{name}: done in {results[name]['wall_s']:.0f} s", flush=True)

    print(
        "\n| configuration | precision | tokens/s | peak RSS (MB) | timed steps | MFU vs bf16 | MFU vs fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        gflops = r["tokens_per_second"] * per_token / 1e9
        print(
            f"| {name} | {r['precision']} | {r['tokens_per_second']:.1f} | {r['peak_rss_mb']:.0f} | {r['timed_steps']} "
            f"| {gflops / rates['bfloat16']:.1%} | {gflops / rates['float32']:.1%} |"
        )
    for baseline in ("trl-default", "trl-fast"):
        for ours in ("ours", "ours-ckpt", "ours-packed"):
            if (
                baseline in results
                and ours in results
                and results[baseline]["tokens_per_second"] > 0
            ):
                b, o = results[baseline], results[ours]
                print(
                    f"{ours} vs {baseline}: {o['tokens_per_second'] / b['tokens_per_second']:.2f}x tokens/s, "
                    f"{o['peak_rss_mb'] / b['peak_rss_mb']:.2f}x peak RSS"
                )


if __name__ == "__main__":
    main()
