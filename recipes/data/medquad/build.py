"""Rebuild qa.jsonl here from the raw MedQuAD XML files.

    python recipes/data/medquad/build.py [RAW_FOLDER]

RAW_FOLDER defaults to ../shared/data/medquad/raw (beside the repo). Keeps the question-answer
pairs whose answer has at most MAX_ANSWER_WORDS words (about a third of them: a 135M model on
a CPU cannot learn, nor be scored fairly on, answers of hundreds of words), then whole documents
in a seeded random order until MAX_PAIRS pairs. Each row keeps its document id, so the recipe
splits by document (the same focus asked several ways never straddles train and test).
"""

from __future__ import annotations

import json
import random
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RAW = HERE.parents[3] / "shared" / "data" / "medquad" / "raw"
MAX_ANSWER_WORDS = 100
MAX_PAIRS = 3000  # ~1.5 MB: under the 2 MB a recipe may ship
SEED = 0


def read_pairs(raw: Path) -> dict[str, list[dict]]:
    """Short-answer pairs by document id ('<subset>/<file stem>'), in file order."""
    documents: dict[str, list[dict]] = {}
    for path in sorted(raw.glob("*/*.xml")):
        document = f"{path.parent.name}/{path.stem}"
        for pair in ET.parse(path).getroot().iter("QAPair"):
            question, answer = pair.find("Question"), pair.find("Answer")
            text = " ".join((answer.text or "").split()) if answer is not None else ""
            if not text or len(text.split()) > MAX_ANSWER_WORDS:
                continue
            documents.setdefault(document, []).append(
                {
                    "prompt": " ".join(question.text.split()),
                    "completion": text,
                    "document": document,
                    "qtype": question.get("qtype"),
                }
            )
    return documents


def build(raw: Path = DEFAULT_RAW, out: Path = HERE) -> None:
    """Write qa.jsonl into `out` from the upstream folders in `raw`."""
    documents = read_pairs(raw)
    order = sorted(documents)
    random.Random(SEED).shuffle(order)
    rows: list[dict] = []
    for document in order:
        if len(rows) + len(documents[document]) > MAX_PAIRS:
            continue
        rows += documents[document]
    with (out / "qa.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(f"qa.jsonl: {len(rows)} pairs from {len({r['document'] for r in rows})} documents")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RAW)
