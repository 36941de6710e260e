"""Rebuild train.csv / test.csv here from the raw PubMedQA (PQA-L) files.

    .venv/bin/python recipes/data/pubmedqa/build.py [RAW_FOLDER]

RAW_FOLDER defaults to ../shared/data/pubmedqa/raw (beside the repo). The official test split is
the 500 PMIDs of `test_ground_truth.json`; the other 500 labelled questions are for training.

Each row is `text,label,pmid`: the text is the question, then the abstract (its sections with
their labels), and the label is yes / no / maybe. Abstracts run to ~800 tokens, so the abstract
is cut to CONTEXT_TOKENS tokens of the default model's tokenizer, keeping its *end*: the results
section comes last and is what decides the answer; the background is what gets cut. With the
recipe's system prompt and the chat template that keeps every example within max_seq_len 256.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RAW = HERE.parents[3] / "shared" / "data" / "pubmedqa" / "raw"
CONTEXT_TOKENS = 160  # 256 - system prompt and template (~25) - question (<= 56) - answer (~3)
MODEL = "smollm2-135m"


def tail(tokenizer, text: str, budget: int) -> str:
    """The last `budget` tokens of `text`, starting at a word boundary, marked with '...'."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return text
    kept = tokenizer.decode(ids[-budget:])
    return "... " + kept.split(" ", 1)[-1]  # drop the partial first word


def row(tokenizer, pmid: str, item: dict) -> list[str]:
    abstract = "\n".join(
        f"{label.capitalize()}: {text}" for label, text in zip(item["LABELS"], item["CONTEXTS"])
    )
    text = f"Question: {item['QUESTION']}\n\nAbstract: {tail(tokenizer, abstract, CONTEXT_TOKENS)}"
    return [text, item["final_decision"], pmid]


def build(raw: Path = DEFAULT_RAW, out: Path = HERE) -> None:
    """Write train.csv and test.csv into `out` from the upstream files in `raw`."""
    from tunewright.models import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    items = json.loads((raw / "ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = json.loads((raw / "test_ground_truth.json").read_text(encoding="utf-8"))
    splits = {
        "test.csv": [p for p in items if p in test_ids],
        "train.csv": [p for p in items if p not in test_ids],
    }
    for name, pmids in splits.items():
        with (out / name).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["text", "label", "pmid"])
            writer.writerows(row(tokenizer, p, items[p]) for p in pmids)
        print(f"{name}: {len(pmids)} rows")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RAW)
