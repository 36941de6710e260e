"""Minutes to accuracy on Banking77: 1, 2, 3 epochs, with the frozen-layer cache and without.

Run: python benchmarks/epochs_to_accuracy.py [--epochs 3] [--baseline-seconds 180] [KEY=VALUE ...]

The customer-support recipe (SmolLM2-135M, LoRA on the top 10 of 30 layers) trains on its whole
train split for `--epochs` epochs with no time budget and no general replay, in one schedule, with
`train.cache_frozen_layers` on: later epochs read the cached output of the 20 frozen layers. At
the end of each epoch the adapter is saved (outside the timed loop); afterwards each one answers
the full 3,080-row test set, constrained to the label names. So the accuracy of epoch k is that of
a checkpoint of the longer run, its learning rate not yet decayed to the end of a k-epoch schedule.

Without the cache every epoch costs what the first costs without it. That is measured in its own
process first: the same run with the cache off for `--baseline-seconds` of training; its tokens/s
gives the minutes each epoch would take without the cache (the cache changes the speed, not the
result: same loss and gradients to float rounding, tests/train/test_frozen_cache.py).

Prints the machine's matmul rates, then one row per epoch: training minutes with the cache,
minutes without it (from the measured rate), accuracy and macro-F1 with 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import matmul_rates  # noqa: E402

RECIPE = Path(__file__).parents[1] / "recipes" / "customer-support.yaml"
# the whole train split, no budget, no replay: the Banking77 question is accuracy alone
SETTINGS = [
    "data.max_train_examples=null",
    "data.max_test_examples=null",
    "train.max_minutes=null",
    "train.general_replay=0",
    "train.report_to=[]",
    "train.log_every_steps=1000000",
    "evaluate.models=[tuned]",
    "evaluate.label_decoding=constrained",
    "evaluate.general_check=false",
    "evaluate.max_minutes=null",
]


def _setup(output_dir: str, epochs: int, cached: bool, overrides: list[str]):
    from rich.console import Console

    from tunewright.config import load_config
    from tunewright.data.prepare import prepare
    from tunewright.train.frozen_cache import FrozenCacheForward
    from tunewright.train.setup import setup

    console = Console(stderr=True)
    cfg = load_config(
        RECIPE,
        [
            f"output_dir={output_dir}",
            f"train.epochs={epochs}",
            f"train.cache_frozen_layers={cached}",
            *SETTINGS,
            *overrides,
        ],
    )
    dataset = prepare(cfg, console=console)
    run, state = setup(cfg, dataset, console=console)
    if isinstance(run.accelerator.unwrap_model(run.forward), FrozenCacheForward) != cached:
        raise SystemExit(f"asked for cache_frozen_layers={cached}, the run chose otherwise")
    return cfg, dataset, run, state, console


def baseline_worker(epochs: int, seconds: float, overrides: list[str]) -> dict:
    """Tokens/s with the cache off, over the first `seconds` of the same run."""
    from tunewright.train.loop import fit

    with tempfile.TemporaryDirectory() as tmp:
        budget = [f"train.max_minutes={seconds / 60}", *overrides]  # a budget: the same schedule
        _, _, run, state, console = _setup(tmp, epochs, False, budget)
        fitted = fit(run, state, console)
        return {"tokens": state.trained_tokens, "seconds": fitted.seconds, "steps": state.step}


def cached_worker(epochs: int, overrides: list[str]) -> dict:
    """Train `epochs` epochs with the cache on, saving the adapter after each; then score each."""
    from tunewright.evaluate.runner import evaluate
    from tunewright.runs import save_trained
    from tunewright.train.loop import fit

    with tempfile.TemporaryDirectory() as tmp:
        cfg, dataset, run, state, console = _setup(tmp, epochs, True, overrides)
        steps_per_epoch = (
            math.ceil(len(run.data.units) / cfg.train.batch_size) / run.micro_batches_per_step
        )
        rows, seconds = [], 0.0
        for epoch in range(1, epochs + 1):
            last = min(math.ceil(epoch * steps_per_epoch), run.planned_steps)
            seconds += fit(replace(run, last_step=last), state, console).seconds
            model = run.accelerator.unwrap_model(run.forward).model
            trained = save_trained(model, run.tokenizer, Path(tmp) / f"epoch-{epoch}", "lora")
            rows.append(
                {
                    "epoch": epoch,
                    "steps": state.step,
                    "tokens": state.trained_tokens,
                    "seconds": seconds,
                    "trained": str(trained),
                }
            )
        for row in rows:
            result = evaluate(cfg, dataset, Path(row.pop("trained")), console=console)
            tuned = result.models["tuned"]
            row |= {"n": result.n_examples, "metrics": tuned.metrics}
        return {"precision": run.precision, "train_rows": len(dataset.train), "epochs": rows}


def _worker(kind: str, args, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--epochs", str(args.epochs)]
    command += ["--baseline-seconds", str(args.baseline_seconds), *overrides]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{kind}: FAILED (exit {proc.returncode})")
    return json.loads(line.removeprefix("RESULT "))


def _interval(metric: dict, percent: bool) -> str:
    f = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    return f"{f(metric['value'])} [{f(metric['low'])}, {f(metric['high'])}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--baseline-seconds", type=float, default=180, help="training seconds with the cache off"
    )
    parser.add_argument("--worker", choices=("off", "on"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.worker == "off":
        out = baseline_worker(args.epochs, args.baseline_seconds, overrides)
    elif args.worker == "on":
        out = cached_worker(args.epochs, overrides)
    if args.worker:
        print("RESULT " + json.dumps(out), flush=True)
        return

    rates = matmul_rates()
    print(
        f"matmul rate bf16 {rates['bfloat16']:.1f}, fp32 {rates['float32']:.1f} GFLOP/s; "
        f"recipe {RECIPE.name}, {args.epochs} epochs, overrides {overrides or 'none'}",
        flush=True,
    )
    started = time.perf_counter()
    off = _worker("off", args, overrides)
    off_rate = off["tokens"] / off["seconds"]
    print(f"cache off: {off['steps']} steps in {off['seconds']:.0f} s, {off_rate:.1f} tokens/s")
    on = _worker("on", args, overrides)
    print(
        f"\n{on['train_rows']} train rows, {on['precision']}; wall {time.perf_counter() - started:.0f} s"
    )
    header = "epochs | steps | minutes, cache on | minutes, cache off (at its measured rate) |"
    print(f"| {header} accuracy (95% CI) | macro-F1 (95% CI) | test rows |")
    print("|---" * 7 + "|")
    for row in on["epochs"]:
        m = row["metrics"]
        print(
            f"| {row['epoch']} | {row['steps']} | {row['seconds'] / 60:.1f} | "
            f"{row['tokens'] / off_rate / 60:.1f} | {_interval(m['accuracy'], True)} | "
            f"{_interval(m['macro_f1'], False)} | {row['n']} |"
        )
    print("RESULT " + json.dumps({"rates": rates, "off": off, "on": on}))


if __name__ == "__main__":
    main()
