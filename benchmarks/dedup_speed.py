"""Throughput, recall and memory of `tunewright.data.dedup` on synthetic short chat rows.

Run: PYTHONPATH=src python benchmarks/dedup_speed.py [--rows 200000]

Rows are 12-22 words (~100 characters) drawn from a Zipf-distributed synthetic vocabulary.
About 5% are planted exact duplicates of an earlier row (case, spacing and trailing punctuation
changed) and 5% planted near duplicates (one word of a 15-22 word row replaced, inserted or
deleted). Throughput is reported beside two baselines run in the same process: exact-only
hashing (a floor on the cost of any dedup), and datasketch's per-row MinHash + MinHashLSH on a
small sample (what the near-duplicate path would cost without chunked signatures).
"""

from __future__ import annotations

import argparse
import random
import resource
import string
import time
from itertools import accumulate

from datasketch import LeanMinHash, MinHash, MinHashLSH

from tunewright.data.dedup import (
    Deduplicator,
    lsh_bands,
    normalize_for_hash,
    text_digest,
)

PLANTED_FRACTION = 0.05  # of rows, for each of the two planted kinds
DATASKETCH_SAMPLE_ROWS = 5_000


def make_vocabulary(rng: random.Random, size: int = 30_000) -> list[str]:
    words = {
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(size * 2)
    }
    return sorted(words)[:size]


def make_rows(
    n_rows: int, seed: int
) -> tuple[list[str], dict[int, int], dict[int, tuple[int, float]]]:
    """Rows plus the planted duplicates: {row: original} and {row: (original, true Jaccard)}."""
    rng = random.Random(seed)
    vocab = make_vocabulary(rng)
    # Zipf: a few very common words, a long tail of rare ones
    cum_weights = list(accumulate(1 / (rank + 1) for rank in range(len(vocab))))

    def sentence(n_words: int) -> list[str]:
        return rng.choices(vocab, cum_weights=cum_weights, k=n_words)

    rows: list[str] = []
    words_of: dict[int, list[str]] = {}
    exact: dict[int, int] = {}
    near: dict[int, tuple[int, float]] = {}
    for i in range(n_rows):
        roll = rng.random()
        if i > 100 and roll < PLANTED_FRACTION:
            original = rng.randrange(i)
            while original in exact or original in near:
                original = rng.randrange(i)
            variant = rows[original].upper() if rng.random() < 0.5 else rows[original]
            rows.append("  " + variant.replace(" ", "  ") + rng.choice(["", ".", "!", "?"]))
            exact[i] = original
            continue
        if i > 100 and roll < 2 * PLANTED_FRACTION:
            original = rng.randrange(i)
            while original in exact or original in near or len(words_of[original]) < 15:
                original = rng.randrange(i)
            words = list(words_of[original])
            edit = rng.choice(["replace", "insert", "delete"])
            position = rng.randrange(len(words))
            if edit == "replace":
                replacement = rng.choice(vocab)
                while replacement in words:
                    replacement = rng.choice(vocab)
                words[position] = replacement
            elif edit == "insert":
                words.insert(position, rng.choice(vocab))
            else:
                del words[position]
            a, b = set(words_of[original]), set(words)
            near[i] = (original, len(a & b) / len(a | b))
        else:
            words = sentence(rng.randint(12, 22))
        words_of[i] = words
        rows.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ""]))
    return rows, exact, near


def exact_only_rows_per_second(rows: list[str]) -> float:
    start = time.perf_counter()
    seen: set[bytes] = set()
    for text in rows:
        seen.add(text_digest(normalize_for_hash(text)))
    return len(rows) / (time.perf_counter() - start)


def datasketch_rows_per_second(rows: list[str], threshold: float, num_perm: int) -> float:
    """datasketch's documented per-row path, same shingles and band layout as Deduplicator."""
    template = MinHash(num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=lsh_bands(threshold, num_perm))
    table = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
    start = time.perf_counter()
    for i, text in enumerate(rows):
        minhash = template.copy()
        minhash.update_batch(set(normalize_for_hash(text).encode().translate(table).split()))
        lean = LeanMinHash(minhash)
        lsh.query(lean)
        lsh.insert(i, lean, check_duplication=False)
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows, planted_exact, planted_near = make_rows(args.rows, args.seed)
    rss_before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mean_chars = sum(map(len, rows)) / len(rows)

    dedup: Deduplicator[int] = Deduplicator(threshold=args.threshold, num_perm=args.num_perm)
    start, cpu_start = time.perf_counter(), time.process_time()
    decisions = list(dedup.add_many(enumerate(rows)))
    rows_per_second = len(rows) / (time.perf_counter() - start)
    rows_per_cpu_second = len(rows) / (time.process_time() - cpu_start)
    rss_after_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    single = Deduplicator(threshold=args.threshold, num_perm=args.num_perm)
    sample = rows[:DATASKETCH_SAMPLE_ROWS]
    start = time.perf_counter()
    for i, text in enumerate(sample):
        single.add(i, text)
    add_rows_per_second = len(sample) / (time.perf_counter() - start)
    exact_baseline = exact_only_rows_per_second(rows)
    datasketch_baseline = datasketch_rows_per_second(sample, args.threshold, args.num_perm)

    exact_caught = sum(decisions[i].kind == "exact" for i in planted_exact)
    near_caught = sum(decisions[i].kind == "near" for i in planted_near)
    near_above = [i for i, (_, jaccard) in planted_near.items() if jaccard >= args.threshold]
    near_above_caught = sum(decisions[i].kind == "near" for i in near_above)
    unplanted_near = sum(d.kind == "near" for i, d in enumerate(decisions) if i not in planted_near)
    unplanted_exact = sum(
        d.kind == "exact" for i, d in enumerate(decisions) if i not in planted_exact
    )
    wrong_original = sum(
        decisions[i].kind == "near" and decisions[i].duplicate_of != original
        for i, (original, _) in planted_near.items()
    )

    print(
        f"rows {len(rows):,}  mean chars {mean_chars:.0f}  threshold {args.threshold}  "
        f"num_perm {args.num_perm}  bands x rows {lsh_bands(args.threshold, args.num_perm)}"
    )
    # On a shared machine wall time includes waiting for a core; CPU time does not.
    print(
        f"add_many: {rows_per_second:,.0f} rows/s wall, {rows_per_cpu_second:,.0f} rows per "
        "CPU-second"
    )
    print(f"{'path':<44}{'rows/s':>12}{'ratio':>8}")
    print(f"{'Deduplicator.add_many (exact + near)':<44}{rows_per_second:>12,.0f}{1:>8.2f}")
    print(
        f"{'Deduplicator.add, row by row':<44}{add_rows_per_second:>12,.0f}"
        f"{add_rows_per_second / rows_per_second:>8.2f}"
    )
    print(
        f"{'baseline: exact hashing only':<44}{exact_baseline:>12,.0f}"
        f"{exact_baseline / rows_per_second:>8.2f}"
    )
    print(
        f"{'baseline: datasketch MinHash+MinHashLSH/row':<44}{datasketch_baseline:>12,.0f}"
        f"{datasketch_baseline / rows_per_second:>8.2f}"
    )
    print()
    print(f"{'planted kind':<34}{'planted':>9}{'caught':>9}{'recall':>8}")
    print(
        f"{'exact':<34}{len(planted_exact):>9,}{exact_caught:>9,}"
        f"{exact_caught / len(planted_exact):>8.3f}"
    )
    print(
        f"{'near, one-word edit (all)':<34}{len(planted_near):>9,}{near_caught:>9,}"
        f"{near_caught / len(planted_near):>8.3f}"
    )
    print(
        f"{'near, true Jaccard >= threshold':<34}{len(near_above):>9,}{near_above_caught:>9,}"
        f"{near_above_caught / max(1, len(near_above)):>8.3f}"
    )
    print(
        f"not planted but flagged: exact {unplanted_exact:,}, near {unplanted_near:,}; "
        f"near matched to a different original: {wrong_original:,}"
    )
    print(f"clusters {len(dedup.clusters()):,}")
    print(
        f"peak RSS {rss_after_mib:,.0f} MiB (after building the rows: {rss_before_mib:,.0f} MiB; "
        f"dedup state ~{(rss_after_mib - rss_before_mib) * 1024 / len(rows):.2f} KiB/row)"
    )


if __name__ == "__main__":
    main()
