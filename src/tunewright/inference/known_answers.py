"""The base model's greedy answers to tunewright's own general prompts, shipped with the package.

Every run of a recipe with general replay needs the base model's answers to a few hundred general
chats, and every forgetting check its answers to the 160 general questions. On a fresh install
generating them was a sizeable share of the 10-minute demo on a slow 2-core machine
(docs/results.md#demo-2026-12-05). The prompts are ours and so is the default model, so the
answers are generated once, by the maintainers (`tools/bundle_known_answers.py`), and shipped in
`known_answers/<fingerprint>.jsonl`.

A file is used only for the model it was made from: it is keyed by a hash of the model's weights
(`fingerprint`), not by its name, so a fine-tuned or different model under the same name never
gets another model's answers. The hash is taken over the weights rounded to bfloat16, so the same
checkpoint loaded in fp32 or bf16 matches. The answers were generated in one dtype (the file says
which); callers that compare them with fresh answers of another model (the forgetting check) use
them only when their own dtype is that one, while general replay, which only needs answers the
base would give, takes them in any dtype.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

import torch
from transformers import PreTrainedModel

from tunewright.inference.generate import Generation

FOLDER = "known_answers"


def fingerprint(model: PreTrainedModel) -> str:
    """A hash of the model's weights (names, shapes, values rounded to bfloat16)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        if tensor.is_floating_point():
            tensor = tensor.detach().to(torch.bfloat16).view(torch.int16)
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def file_name(model_fingerprint: str) -> str:
    return f"{model_fingerprint[:16]}.jsonl"


def shipped_folder() -> Traversable:
    """Where the files are: inside the installed package."""
    return files("tunewright.inference").joinpath(FOLDER)


@cache
def _read(
    folder: Traversable, model_fingerprint: str
) -> tuple[dict, dict[tuple[str, int], Generation]]:
    """The header and the answers by (prompt, max_new_tokens) of the file for this fingerprint;
    ({}, {}) when none is shipped."""
    path = folder.joinpath(file_name(model_fingerprint))
    if not path.is_file():
        return {}, {}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    header, rows = lines[0], lines[1:]
    if header.get("fingerprint") != model_fingerprint:  # a 16-digit prefix collision
        return {}, {}
    answers = {
        (r["prompt"], r["max_new_tokens"]): Generation(r["text"], r["new_tokens"], r["stopped"])
        for r in rows
    }
    return header, answers


def known_answers(
    model: PreTrainedModel,
    prompts: Iterable[str],
    max_new_tokens: int,
    *,
    same_dtype: bool,
) -> dict[str, Generation]:
    """The shipped greedy answers of this model to those of `prompts` it has (single-turn chats
    without a system prompt, at most `max_new_tokens` new tokens). With `same_dtype`, only when
    they were generated in the dtype the model is in now."""
    header, answers = _read(shipped_folder(), fingerprint(model))
    if not answers or (same_dtype and header.get("dtype") != str(model.dtype)):
        return {}
    found = {p: answers.get((p, max_new_tokens)) for p in prompts}
    return {p: g for p, g in found.items() if g is not None}


def file_lines(
    model: PreTrainedModel,
    model_name: str,
    model_fingerprint: str,
    answers: dict[tuple[str, int], Generation],
    note: str,
) -> list[str]:
    """The lines of a known-answers file (header first), as the bundling script writes them."""
    header = {
        "model": model_name,
        "fingerprint": model_fingerprint,
        "dtype": str(model.dtype),
        "note": note,
    }
    rows = [
        {"prompt": p, "max_new_tokens": n, "text": g.text, "new_tokens": g.new_tokens}
        | {"stopped": g.stopped}
        for (p, n), g in answers.items()
    ]
    return [json.dumps(header)] + [json.dumps(r, ensure_ascii=False) for r in rows]
