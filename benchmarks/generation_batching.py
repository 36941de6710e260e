"""Batched generation (left padding, KV cache) against one prompt at a time, on the default model.

Run: PYTHONPATH=src python benchmarks/generation_batching.py [--prompts 64] [--max-new-tokens 20]
(on a machine shared with other jobs, set OMP_NUM_THREADS=1: oversubscribed OpenMP threads
spin-wait and make the one-at-a-time loop of tiny forward passes many times slower)

Both ways decode the same prompts greedily in one process, so the ratio is what batching buys on
this machine, whatever its speed. Prompts are the first Banking77 test questions with the demo
recipe's system prompt (what `tunewright evaluate` generates for). Prints both timings, the speed
ratio (target: at least 8x) and whether every answer is token-for-token identical.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.inference.generate import generate
from tunewright.models import DEFAULT_MODEL, load_model

QUESTIONS = Path(__file__).parents[1] / "recipes" / "data" / "banking77" / "test.csv"
SYSTEM_PROMPT = "Name the banking intent."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    loaded = load_model(args.model)
    chat = ChatTokenizer(loaded.tokenizer, SYSTEM_PROMPT, 512)
    with QUESTIONS.open(encoding="utf-8") as f:
        questions = [row["text"] for row, _ in zip(csv.DictReader(f), range(args.prompts))]
    prompts = [chat.encode_prompt((Message("user", q),)) for q in questions]

    # warm-up: first calls pay for allocator growth and lazy initialisation
    generate(loaded.model, loaded.tokenizer, prompts[:2], max_new_tokens=4, batch_size=2)
    print(
        f"model {args.model}, {len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
        f"up to {args.max_new_tokens} new tokens, {torch.get_num_threads()} torch threads",
        flush=True,
    )
    started = time.perf_counter()
    single = [
        generate(
            loaded.model, loaded.tokenizer, [p], max_new_tokens=args.max_new_tokens, batch_size=1
        )[0]
        for p in prompts
    ]
    single_s = time.perf_counter() - started
    print(
        f"one at a time:      {single_s:7.1f} s  ({len(prompts) / single_s:6.2f} prompts/s)",
        flush=True,
    )
    started = time.perf_counter()
    batched = generate(
        loaded.model,
        loaded.tokenizer,
        prompts,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    batched_s = time.perf_counter() - started

    differing = [
        i
        for i, (a, b) in enumerate(zip(single, batched))
        if (a.text, a.new_tokens) != (b.text, b.new_tokens)
    ]
    tokens = sum(g.new_tokens for g in batched)
    print(
        f"batched (size {args.batch_size:>3}): {batched_s:7.1f} s  ({len(prompts) / batched_s:6.2f} prompts/s, "
        f"{tokens / batched_s:.0f} new tokens/s)"
    )
    print(f"speed ratio: {single_s / batched_s:.1f}x (target >= 8x)")
    print(
        f"outputs identical: {'yes' if not differing else f'no, {len(differing)} of {len(prompts)} differ'}"
    )
    for i in differing[:3]:
        print(f"  prompt {i}: one-at-a-time {single[i].text!r} vs batched {batched[i].text!r}")


if __name__ == "__main__":
    main()
