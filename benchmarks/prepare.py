"""Throughput and peak memory of `tunewright.data.prepare` on synthetic short chat rows.

Run: OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/prepare.py [--rows 1000000]

Writes `--rows` JSONL chat rows (~200 bytes each: a user question and an assistant answer of
8-24 words from a Zipf vocabulary) to a temporary folder, with planted problems: 3% exact
duplicates (case and spacing changed), 3% near duplicates (one word replaced), 2% rows with
PII (e-mail, phone, card, IBAN, SSN, IP), 0.2% bad rows (broken JSON, invalid UTF-8, empty
content, unknown role, no assistant turn).

Then, each timed in this process:
1. baseline: read and `json.loads` every line, nothing else (the floor any preparation pays);
2. `prepare(cfg, tokens=False)`: validate + clean + PII (all types) + exact and near dedup
   (removing both) + random split + writing the Parquet splits, quarantine, duplicates,
   manifest and card: rows/s end to end, and as a ratio to the baseline;
3. the token stage alone (the model's tokenizer and chat template, exactly as training encodes
   examples) on a sample of the train split, when the bundled model is installed.
Peak RSS is the process's maximum resident set (ru_maxrss) after step 2, and that of the largest
worker process (JSONL inputs of 32 MB and more are parsed by `tunewright.data.batches.WORKERS`
forked workers); their sum bounds the whole footprint from above (forked pages are shared). CPU
time is printed too: on a shared machine, rows per CPU-second is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import string
import tempfile
import time
from itertools import accumulate
from pathlib import Path

from rich.console import Console

from tunewright.config import RunConfig
from tunewright.data import batches
from tunewright.data.prepare import prepare
from tunewright.dataset.store import read_split

PII_VALUES = [
    "jane.doe@example.com", "+44 20 7946 0958", "(555) 234-5678", "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32", "123-45-6789", "192.168.10.24",
]  # fmt: skip
BAD_ROWS = [
    b'{"messages": [{"role": "user", "content": "broken',
    b'{"messages": [{"role": "user", "content": "bad \xff byte"}, {"role": "assistant", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}',
    b'{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": "only a question"}]}',
]


def write_rows(path: Path, n_rows: int, seed: int) -> int:
    """Write the synthetic JSONL file; returns its size in bytes."""
    rng = random.Random(seed)
    vocab = sorted(
        {"".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(60_000)}
    )
    cum_weights = list(accumulate(1 / (rank + 1) for rank in range(len(vocab))))
    recent: list[tuple[str, str]] = []
    with path.open("wb") as f:
        for i in range(n_rows):
            roll = rng.random()
            if roll < 0.002:
                f.write(rng.choice(BAD_ROWS) + b"\n")
                continue
            if roll < 0.032 and recent:
                question, answer = rng.choice(recent)
                question = "  " + question.upper()  # an exact duplicate once normalised
            elif roll < 0.062 and recent:
                question, answer = rng.choice(recent)
                words = answer.split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                answer = " ".join(words)
            else:
                question = (
                    " ".join(rng.choices(vocab, cum_weights=cum_weights, k=rng.randint(5, 10)))
                    + "?"
                )
                answer = (
                    " ".join(rng.choices(vocab, cum_weights=cum_weights, k=rng.randint(8, 14)))
                    + "."
                )
                if roll < 0.082:
                    question += f" my details: {rng.choice(PII_VALUES)}"
                if len(recent) < 10_000:
                    recent.append((question, answer))
                else:
                    recent[rng.randrange(len(recent))] = (question, answer)
            row = {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
            f.write(json.dumps(row).encode() + b"\n")
    return path.stat().st_size


def baseline_parse(path: Path) -> float:
    started = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            try:
                json.loads(line)
            except ValueError:
                pass
    return time.perf_counter() - started


def peak_rss_mb() -> tuple[float, float]:
    """The largest resident set of this process, and of any (finished) worker it started."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 1024, workers / 1024  # Linux: KiB


def cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system) of this process, and of its finished worker processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, workers.ru_utime + workers.ru_stime


def token_stage(dataset, sample: int) -> None:
    from tunewright.data.token_stats import TokenMeter
    from tunewright.dataset.tokenize import ChatTokenizer
    from tunewright.errors import TunewrightError
    from tunewright.models import load_tokenizer

    try:
        tokenizer = load_tokenizer("smollm2-135m")
    except TunewrightError as e:
        print(f"token stage: skipped ({e})")
        return
    meter = TokenMeter(ChatTokenizer(tokenizer, None, 512))
    examples = read_split(dataset.folder / "train.parquet", limit=sample)
    started = time.perf_counter()
    for example in examples:
        meter.measure(example, "train")
    seconds = time.perf_counter() - started
    stats = meter.summary()["splits"]["train"]
    print(
        f"token stage (smollm2-135m tokenizer + chat template, {len(examples):,} examples): "
        f"{len(examples) / seconds:,.0f} rows/s; mean length {stats['mean_length']} tokens"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--token-sample", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chat.jsonl"
        size = write_rows(data, args.rows, args.seed)
        print(f"input: {args.rows:,} rows, {size / 1e6:.0f} MB of JSONL")
        base = baseline_parse(data)
        print(f"baseline (read + json.loads only): {base:.1f} s, {args.rows / base:,.0f} rows/s")
        cfg = RunConfig.model_validate({
            "name": "bench", "output_dir": str(Path(tmp) / "runs"),
            "data": {
                "train_files": [str(data)], "test_fraction": 0.01, "val_fraction": 0.01,
                "pii_redact": ["EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE"],
                "dedup": "near",
            },
        })  # fmt: skip
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        dataset = prepare(cfg, console=Console(quiet=True), tokens=False)
        seconds = time.perf_counter() - started
        own_cpu, workers_cpu = (
            after - before for after, before in zip(cpu_seconds(), cpu_before, strict=True)
        )
        s = dataset.summary
        own_rss, worker_rss = peak_rss_mb()
        print(
            f"prepare (validate + clean + PII + exact/near dedup + split + write): {seconds:.1f} s, "
            f"{args.rows / seconds:,.0f} rows/s ({base / seconds:.2f}x the baseline's rate); "
            f"peak RSS {own_rss:,.0f} MB (workers: at most {worker_rss:,.0f} MB each; all together "
            f"at most {own_rss + batches.WORKERS * worker_rss if worker_rss else own_rss:,.0f} MB)"
        )
        print(
            f"  CPU time: {own_cpu:.1f} s in this process + {workers_cpu:.1f} s in {batches.WORKERS} worker(s) "
            f"({args.rows / (own_cpu + workers_cpu):,.0f} rows per CPU-second); "
            f"load average after the run (2 cores): {os.getloadavg()[0]:.1f}"
        )
        print(
            f"  splits {s['splits']}; quarantined {s['quarantined']} {s['quarantined_by_reason']}; "
            f"duplicates {s['duplicates']['found']}, removed {s['duplicates_removed']}; "
            f"PII {s['pii']['redacted']}; rows cleaned {s['cleaning']['rows_changed']}"
        )
        if args.token_sample:
            token_stage(dataset, args.token_sample)


if __name__ == "__main__":
    main()
