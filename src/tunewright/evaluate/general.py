"""Forgetting check: did tuning cost general ability?

Base and tuned answer the same 160 short general questions (`general_set.jsonl`: capitals,
science, animals, arithmetic, units, words, simple instructions; written for tunewright, so there
is no licence question): enough that a real loss is unlikely to pass as noise. An answer is right
when a reference, normalised SQuAD-style, appears in it as whole words: lenient on purpose,
because an instruct model says "The capital of France is Paris." rather than "Paris". Both models
get the question alone, without the run's system prompt, so the prompts are identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.evaluate.compare import paired_comparison, significance_sentence
from tunewright.evaluate.metrics import normalize_answer
from tunewright.inference.generate import Generation, generate
from tunewright.inference.known_answers import known_answers

# The check passes with "no significant loss": no significant drop (paired test, p < 0.05) and
# tuned within this many points of base, so that a loss too small for 160 questions to prove
# significant, but large, does not pass by luck.
MARGIN = 0.03
# Short facts need few tokens; a longer limit only buys rambling.
MAX_NEW_TOKENS = 32
_MAX_PROMPT_TOKENS = 128


@dataclass(frozen=True, slots=True)
class GeneralItem:
    id: str
    prompt: str
    answers: tuple[str, ...]


@cache
def general_set() -> tuple[GeneralItem, ...]:
    """The bundled general-ability questions."""
    text = files("tunewright.evaluate").joinpath("general_set.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return tuple(GeneralItem(r["id"], r["prompt"], tuple(r["answers"])) for r in rows)


def contains_reference(answer: str, references: tuple[str, ...]) -> bool:
    """True when any normalised reference occurs in the normalised answer as whole words."""
    haystack = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(ref)} " in haystack for ref in references)


def generate_general(model, tokenizer, *, batch_size: int) -> list[Generation]:
    """Greedy answers of one model to every general question, in set order."""
    chat = ChatTokenizer(tokenizer, None, _MAX_PROMPT_TOKENS)
    prompts = [chat.encode_prompt((Message("user", item.prompt),)) for item in general_set()]
    return generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size)


def answer_general(
    model, tokenizer, *, batch_size: int, look_up: bool = True
) -> tuple[list[str], bool]:
    """One model's answers to every general question, in set order, and whether they are the
    shipped answers of this very model (`inference.known_answers`) rather than generated now.
    Shipped answers count only in the dtype they were made in: the check compares them with the
    tuned model's answers generated in this dtype now. `look_up=False` skips the look-up (and its
    hash of the weights) for a model that cannot have any, such as a freshly tuned one."""
    prompts = [item.prompt for item in general_set()]
    shipped = known_answers(model, prompts, MAX_NEW_TOKENS, same_dtype=True) if look_up else {}
    if len(shipped) == len(prompts):
        return [shipped[p].text for p in prompts], True
    return [g.text for g in generate_general(model, tokenizer, batch_size=batch_size)], False


def right_of(summary: dict, model: str) -> str:
    """The forgetting check's right answers of `model` ("base" or "tuned") as "right/n"."""
    n = summary["n"]
    return f"{round(summary[f'{model}_accuracy'] * n)}/{n}"


def forgetting_summary(base_answers: list[str], tuned_answers: list[str]) -> dict:
    """Accuracy of each model, the paired test of tuned vs base, and one sentence about it."""
    items = general_set()
    base_right = [
        contains_reference(a, item.answers) for a, item in zip(base_answers, items, strict=True)
    ]
    tuned_right = [
        contains_reference(a, item.answers) for a, item in zip(tuned_answers, items, strict=True)
    ]
    test = paired_comparison(
        "classification",
        "general_accuracy",
        [float(r) for r in base_right],
        [float(r) for r in tuned_right],
        base_right,
        tuned_right,
    )
    base_acc, tuned_acc = sum(base_right) / len(items), sum(tuned_right) / len(items)
    significant_loss = test["p_value"] < 0.05 and test["delta"] < 0
    passed = not significant_loss and tuned_acc >= base_acc - MARGIN
    if significant_loss:
        sentence = f"General answers got worse by {-test['delta'] * 100:.1f} pts (p = {test['p_value']:.2g})"
    elif not passed:
        sentence = (
            f"General answers fell by {-test['delta'] * 100:.1f} pts (p = {test['p_value']:.2g}): "
            f"not significant, but more than the check's {MARGIN * 100:g}-point margin"
        )
    elif test["p_value"] < 0.05:
        sentence = f"General answers got {significance_sentence(test['delta'], test['p_value'])}"
    else:
        sentence = f"No significant loss on general questions (p = {test['p_value']:.2g})"
    sentence += f": base {base_right.count(True)}/{len(items)}, tuned {tuned_right.count(True)}/{len(items)} right."
    rows = [
        {
            "id": item.id,
            "prompt": item.prompt,
            "answers": list(item.answers),
            "base": {"answer": b, "right": br},
            "tuned": {"answer": t, "right": tr},
        }
        for item, b, t, br, tr in zip(items, base_answers, tuned_answers, base_right, tuned_right)
    ]
    return {
        "n": len(items),
        "passed": passed,
        "base_accuracy": base_acc,
        "tuned_accuracy": tuned_acc,
        "test": test,
        "sentence": sentence,
        "rows": rows,
    }
