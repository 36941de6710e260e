"""Rebuild train.csv / test.csv here from the raw upstream CSVs.

    python recipes/data/twitter-financial-news-sentiment/build.py [RAW_FOLDER]

RAW_FOLDER defaults to ../shared/data/twitter-financial-news-sentiment/raw (beside the repo).
Every row is kept, in upstream order; only the numeric label becomes its name, so prompts,
answers and reports read "bearish", not "0". The official `valid` split becomes `test.csv`
(upstream has no test split).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RAW = HERE.parents[3] / "shared" / "data" / "twitter-financial-news-sentiment" / "raw"
LABELS = {
    "0": "bearish",
    "1": "bullish",
    "2": "neutral",
}  # upstream card: 0 Bearish, 1 Bullish, 2 Neutral
FILES = {"sent_train.csv": "train.csv", "sent_valid.csv": "test.csv"}


def convert(source: Path, target: Path) -> int:
    """Copy `source` to `target` with label names; returns the rows written."""
    with source.open(encoding="utf-8", newline="") as f:
        rows = [(row["text"], LABELS[row["label"]]) for row in csv.DictReader(f)]
    with target.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return len(rows)


def build(raw: Path = DEFAULT_RAW, out: Path = HERE) -> None:
    """Write train.csv and test.csv into `out` from the upstream files in `raw`."""
    for name, target in FILES.items():
        print(f"{target}: {convert(raw / name, out / target)} rows")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RAW)
