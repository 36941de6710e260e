"""Batched generation (left padding, KV cache) against one prompt at a time, on the default model.

Run: PYTHONPATH=src python benchmarks/generation_batching.py [--prompts 64] [--max-new-tokens 20]
(on a machine shared with other jobs, set OMP_NUM_THREADS=1: oversubscribed OpenMP threads
spin-wait and make the one-at-a-time loop of tiny forward passes many times slower)

Both ways decode the same prompts greedily in one process, so the ratio is what batching buys on
this machine, whatever its speed. `--rates` also measures prefill and decode on their own and
prints their achieved GFLOP/s against the matrix-product rate measured in the same run (targets:
prefill >= 50% of it; a decode step at batch 64 within 2x of its FLOP cost). Prompts are the first Banking77 test questions with the demo
recipe's system prompt (what `tunewright evaluate` generates for); `--label-list` appends the
77-label instruction, as the demo's fair base 0-shot evaluation asks, so every prompt starts with
the same few hundred tokens. Prints both timings, the speed ratio (target: at least 8x) and
whether every answer is token-for-token identical.

The decode step is timed three ways: with transformers' DynamicCache holding every row's copy of
the whole prompt (how `generate` decoded before `inference.shared_prefix`), with a preallocated
StaticCache (no concatenation, still a copy per row), and the way `generate` decodes now: rows' own tokens in a preallocated `RowCache`, the shared prefix kept once and
attended by all rows through `cascade_attention`.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.evaluate.prompts import label_instruction
from tunewright.hardware import torch_dtype
from tunewright.inference.generate import MIN_SHARED_PREFIX_TOKENS, generate, shared_prefix_length
from tunewright.inference.shared_prefix import RowCache, cascade, prefix_of
from tunewright.models import DEFAULT_MODEL, load_model

QUESTIONS = Path(__file__).parents[1] / "recipes" / "data" / "banking77" / "test.csv"
SYSTEM_PROMPT = "Name the banking intent."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rates", action="store_true", help="also time prefill and decode alone")
    parser.add_argument(
        "--label-list",
        action="store_true",
        help="append the 77-label instruction to the system prompt (the demo's fair base 0-shot)",
    )
    parser.add_argument(
        "--precision", default="auto", help="auto, bf16 or fp32 (tunewright.hardware decides auto)"
    )
    args = parser.parse_args()

    loaded = load_model(args.model, dtype=torch_dtype(args.precision))
    with QUESTIONS.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    questions = [row["text"] for row in rows[: args.prompts]]
    system = SYSTEM_PROMPT
    if args.label_list:
        labels = sorted({row["category"] for row in rows})
        system = f"{SYSTEM_PROMPT}\n\n{label_instruction(labels)}"
    chat = ChatTokenizer(loaded.tokenizer, system, 2048)
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
    if args.rates:
        rates(loaded.model, prompts, args.batch_size, steps=args.max_new_tokens)


def forward_flops(model, tokens: int, context: int, logits_rows: int) -> float:
    """FLOPs of a forward pass over `tokens` new positions that attend to `context` positions on
    average: 2 per weight of every decoder linear layer per token, the LM head for the rows
    whose logits are computed, and QK^T plus AV (4 x context x hidden per token and layer)."""
    cfg = model.config
    decoder = sum(
        m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)
    )
    head = model.lm_head.weight.numel()
    attention = 4 * cfg.num_hidden_layers * context * cfg.hidden_size
    return 2.0 * decoder * tokens + 2.0 * head * logits_rows + attention * tokens


@torch.inference_mode()
def rates(model, prompts: list[list[int]], batch_size: int, *, steps: int) -> None:
    """Prefill one batch of equal-length prompts, then decode `steps` tokens, timing each."""
    from train_throughput import matmul_rates  # benchmarks/ is on the path when run as a script
    from transformers import DynamicCache, StaticCache

    dtype = next(model.parameters()).dtype
    rate = matmul_rates()["bfloat16" if dtype == torch.bfloat16 else "float32"]
    width = max(map(len, prompts[:batch_size]))
    rows = [p + p[-1:] * (width - len(p)) for p in (prompts * batch_size)[:batch_size]]
    ids = torch.tensor(rows)
    for _ in range(2):  # the first call pays one-off costs
        cache = DynamicCache(config=model.config)
        started = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - started
    prefill = forward_flops(model, batch_size * width, (width + 1) / 2, batch_size)
    out_prefill = out
    step_dynamic = _decode_step_s(model, out, cache, steps)
    decode = forward_flops(model, batch_size, width + steps / 2, batch_size)
    print(f"matmul rate ({dtype}): {rate:.1f} GFLOP/s")
    print(
        f"prefill {batch_size} x {width} tokens: {prefill_s:.2f} s, {prefill / prefill_s / 1e9:.1f} "
        f"GFLOP/s = {prefill / prefill_s / 1e9 / rate:.0%} of the matmul rate (target >= 50%)"
    )
    cost = decode / (rate * 1e9)
    print(
        f"decode step at batch {batch_size}, DynamicCache, a copy of the prompt per row: "
        f"{step_dynamic * 1e3:.0f} ms, its FLOPs cost {cost * 1e3:.0f} ms at the matmul rate: "
        f"{step_dynamic / cost:.1f}x (target <= 2x)"
    )
    # the simpler fix, for comparison: a preallocated StaticCache (no torch.cat), a prefix per row
    static = StaticCache(config=model.config, max_cache_len=width + steps)
    for i, layer in enumerate(cache.layers):
        static.update(layer.keys[:, :, :width], layer.values[:, :, :width], i)
    step_static = _decode_step_s(model, out_prefill, static, steps)
    print(
        f"decode step at batch {batch_size}, StaticCache, a copy of the prompt per row: "
        f"{step_static * 1e3:.0f} ms = {step_static / cost:.1f}x its FLOP cost"
    )
    # as generate() decodes now: the shared start once, each row's own tokens in a RowCache
    shared = shared_prefix_length(rows)
    shared = shared if shared >= MIN_SHARED_PREFIX_TOKENS else 0
    prefix = None
    if shared:
        prefix_cache = DynamicCache(config=model.config)
        model(input_ids=ids[:1, :shared], cache=prefix_cache, use_cache=True)
        prefix = prefix_of(prefix_cache)
    with cascade(model, prefix):
        for _ in range(2):
            cache = RowCache(model.config.num_hidden_layers, width - shared + steps, shared)
            started = time.perf_counter()
            out = model(input_ids=ids[:, shared:], cache=cache, use_cache=True, logits_to_keep=1)
            prefill_rows_s = time.perf_counter() - started
        step_rows = _decode_step_s(model, out, cache, steps)
    print(
        f"prefill of the rows' own {width - shared} tokens after a shared prefix of {shared}: "
        f"{prefill_rows_s:.2f} s"
    )
    print(
        f"decode step at batch {batch_size}, RowCache + cascade attention, prefix once: "
        f"{step_rows * 1e3:.0f} ms = {step_rows / cost:.1f}x its FLOP cost (target <= 2x), "
        f"{step_dynamic / step_rows:.2f}x faster than with DynamicCache"
    )


def _decode_step_s(model, out, cache, steps: int) -> float:
    """Median seconds of a greedy decode step (after a warm-up step), continuing `cache`."""
    step_s = []
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        started = time.perf_counter()
        out = model(input_ids=token, cache=cache, use_cache=True)
        step_s.append(time.perf_counter() - started)
        token = out.logits[:, -1:].argmax(-1)
    return sorted(step_s[1:])[len(step_s[1:]) // 2]


if __name__ == "__main__":
    main()
