"""What each evaluated model variant is asked: a fair base gets the instruction, the label list
and optionally k worked examples; the tuned model keeps exactly the prompt it was trained with.

A base model that has never seen the label names cannot be expected to produce them, so scoring
it on the tuned model's bare prompt overstates what tuning bought. Listing the labels (zero-shot)
and showing examples from the train split (k-shot) are the baselines a sceptical reader asks for.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunewright.dataset.example import Example, Message


@dataclass(frozen=True)
class Variant:
    """One model + prompt combination scored on the test set.

    `model` is "base", "tuned" or a compared run folder; `system_prompt` and `shots` shape the
    prompt. Variants of one model share a loaded model.
    """

    name: str
    model: str
    description: str
    system_prompt: str | None
    instruction: str | None = None
    shots: tuple[Example, ...] = field(default_factory=tuple)


def label_instruction(labels: Sequence[str]) -> str:
    """The sentence that tells a base model which answers are allowed."""
    return "Answer with exactly one of: " + ", ".join(labels)


def pick_shots(
    train: Sequence[Example], k: int, seed: int, *, by_label: bool
) -> tuple[Example, ...]:
    """k train examples, chosen deterministically by `seed`.

    With `by_label`, examples are taken round-robin over labels (in a seeded order), so k shots
    cover min(k, number of labels) different labels rather than repeating the most common one.
    """
    pool = [e for e in train if e.reference]
    if not pool:
        return ()
    rng = random.Random(seed)
    shuffled = rng.sample(pool, len(pool))
    if not by_label:
        return tuple(shuffled[:k])
    groups: dict[str, list[Example]] = {}
    for example in shuffled:  # insertion order = first appearance in the seeded shuffle
        groups.setdefault(example.reference, []).append(example)
    picked: list[Example] = []
    while len(picked) < min(k, len(pool)):
        for group in groups.values():
            if group and len(picked) < k:
                picked.append(group.pop(0))
    return tuple(picked)


def _without_system(messages: Sequence[Message]) -> list[Message]:
    return [m for m in messages if m.role != "system"]


def variant_messages(variant: Variant, prompt: Sequence[Message]) -> tuple[Message, ...]:
    """The full chat a variant sees for one test prompt, system message included.

    The example's own system message (chat data) wins over the recipe's `system_prompt`, as in
    training; the instruction is appended to it and the shots go before the question.
    """
    own = next((m.content for m in prompt if m.role == "system"), None)
    system = "\n\n".join(p for p in (own or variant.system_prompt, variant.instruction) if p)
    turns: list[Message] = [Message("system", system)] if system else []
    for shot in variant.shots:
        turns += _without_system(shot.prompt_messages) + [Message("assistant", shot.reference)]
    return tuple(turns + _without_system(prompt))


def base_variants(
    names: Sequence[str],
    system_prompt: str | None,
    labels: Sequence[str] | None,
    train: Sequence[Example],
    shots: int,
    seed: int,
) -> list[Variant]:
    """The requested base variants (`base_0shot`, `base_kshot`), in `names` order."""
    instruction = label_instruction(labels) if labels else None
    listed = " with the labels listed" if labels else ""
    variants = []
    for name in names:
        if name == "base_0shot":
            variants.append(
                Variant(name, "base", f"base model, zero-shot{listed}", system_prompt, instruction)
            )
        elif name == "base_kshot":
            picked = pick_shots(train, shots, seed, by_label=bool(labels))
            variants.append(
                Variant(
                    name,
                    "base",
                    f"base model, {len(picked)}-shot{listed}",
                    system_prompt,
                    instruction,
                    picked,
                )
            )
    return variants
