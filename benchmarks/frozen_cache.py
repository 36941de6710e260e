"""Frozen-layer cache: tokens/s of epochs 1, 2 and 3 with `train.cache_frozen_layers` on and off.

Run: python benchmarks/frozen_cache.py [--examples 2000] [--epochs 3] [--repeats 1] [KEY=VALUE ...]

The customer-support recipe (Banking77 on SmolLM2-135M, LoRA on the top `train.lora_layers: 10`
of 30 layers) trains `--epochs` epochs of `--examples` examples, once with the cache off (the
baseline) and once on, each in its own subprocess (so each peak RSS is that of a fresh process,
and the cache's memory shows in it). `--repeats` alternates off/on that many times. KEY=VALUE
overrides apply to both (e.g. `train.precision=fp32`, `train.lora_layers=20`).

Each epoch is timed on its own: `fit` runs to the end of the epoch's last optimiser step and its
loop seconds divide the non-padding tokens trained in that epoch. Epoch 1 of both includes the
first step's one-off costs, and with the cache on it also fills the cache (the frozen layers run
forward once, as without it). Epochs 2 and on read the cache and run only the top layers. It
prints each epoch's tokens/s, the ratio on/off, the final train loss of both (they should agree
to rounding) and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

RECIPE = Path(__file__).parents[1] / "recipes" / "customer-support.yaml"


def worker(cached: bool, examples: int, epochs: int, overrides: list[str]) -> dict:
    from rich.console import Console

    from tunewright.config import load_config
    from tunewright.data.prepare import prepare
    from tunewright.train.frozen_cache import FrozenCacheForward
    from tunewright.train.loop import fit
    from tunewright.train.setup import setup

    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            RECIPE,
            [
                f"output_dir={tmp}",
                f"data.max_train_examples={examples}",
                f"train.epochs={epochs}",
                f"train.cache_frozen_layers={cached}",
                "train.report_to=[]",
                "train.log_every_steps=1000000",
                *overrides,
            ],
        )
        dataset = prepare(cfg, console=console)
        run, state = setup(cfg, dataset, console=console)
        uses_cache = isinstance(run.accelerator.unwrap_model(run.forward), FrozenCacheForward)
        if uses_cache != cached:
            raise SystemExit(f"asked for cache_frozen_layers={cached}, the run chose otherwise")
        micro_batches_per_epoch = math.ceil(len(run.data.units) / cfg.train.batch_size)
        steps_per_epoch = micro_batches_per_epoch / run.micro_batches_per_step
        per_epoch = []
        for epoch in range(1, epochs + 1):
            # an epoch that ends inside an optimiser step (grad_accum_steps) ends after it
            last = min(math.ceil(epoch * steps_per_epoch), run.planned_steps)
            tokens_before = state.trained_tokens
            fitted = fit(replace(run, last_step=last), state, console)
            tokens = state.trained_tokens - tokens_before
            per_epoch.append({"tokens": tokens, "seconds": fitted.seconds})
    return {
        "precision": run.precision,
        "epochs": per_epoch,
        "final_train_loss": state.train_loss_ema,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_worker(cached: bool, args, overrides: list[str]) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "on" if cached else "off",
        "--examples",
        str(args.examples),
        "--epochs",
        str(args.epochs),
        *overrides,
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"cache {'on' if cached else 'off'}: FAILED\n{proc.stderr[-3000:]}")
    result = json.loads(line.removeprefix("RESULT "))
    result["wall_s"] = time.perf_counter() - started
    return result


def tokens_per_second(epoch: dict) -> float:
    return epoch["tokens"] / epoch["seconds"] if epoch["seconds"] > 0 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2000, help="training examples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="off/on pairs, alternated")
    parser.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.worker:
        out = worker(args.worker == "on", args.examples, args.epochs, overrides)
        print("RESULT " + json.dumps(out), flush=True)
        return

    import torch

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, load average {os.getloadavg()[0]:.2f}; recipe {RECIPE.name}, "
        f"{args.examples} examples, {args.epochs} epochs, overrides {overrides or 'none'}"
    )
    for repeat in range(args.repeats):
        off = run_worker(False, args, overrides)
        on = run_worker(True, args, overrides)
        print(f"\nrepeat {repeat + 1} ({off['precision']}): tokens/s per epoch")
        print(f"{'epoch':>5} {'off':>10} {'on':>10} {'on/off':>7}")
        for epoch, (a, b) in enumerate(zip(off["epochs"], on["epochs"]), start=1):
            base, cached = tokens_per_second(a), tokens_per_second(b)
            print(f"{epoch:>5} {base:>10.1f} {cached:>10.1f} {cached / base:>7.2f}")
        total_off = sum(e["tokens"] for e in off["epochs"]) / sum(
            e["seconds"] for e in off["epochs"]
        )
        total_on = sum(e["tokens"] for e in on["epochs"]) / sum(e["seconds"] for e in on["epochs"])
        print(f"{'all':>5} {total_off:>10.1f} {total_on:>10.1f} {total_on / total_off:>7.2f}")
        print(
            f"final train loss: off {off['final_train_loss']:.4f}, on {on['final_train_loss']:.4f}; "
            f"peak RSS: off {off['peak_rss_mb']:.0f} MB, on {on['peak_rss_mb']:.0f} MB; "
            f"wall: off {off['wall_s']:.0f} s, on {on['wall_s']:.0f} s"
        )


if __name__ == "__main__":
    main()
