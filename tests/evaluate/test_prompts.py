"""What each variant is asked: the fair base sees the labels and k train examples; tuned keeps its prompt."""

from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.evaluate.prompts import (
    Variant,
    base_variants,
    label_instruction,
    pick_shots,
    variant_messages,
)
from tunewright.models import load_tokenizer

LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card"]


def _example(text: str, label: str, i: int) -> Example:
    return Example(
        messages=(Message("user", text), Message("assistant", label)), label=label, source=f"t:{i}"
    )


# 10 of one label, 2 each of the others: a plain sample would mostly repeat the common label.
TRAIN = (
    [_example(f"question {i}", "card_arrival", i) for i in range(10)]
    + [_example(f"rate {i}", "exchange_rate", 10 + i) for i in range(2)]
    + [_example(f"lost {i}", "lost_or_stolen_card", 12 + i) for i in range(2)]
)


def test_label_instruction_lists_every_label():
    assert (
        label_instruction(LABELS)
        == "Answer with exactly one of: card_arrival, exchange_rate, lost_or_stolen_card"
    )


def test_shots_are_deterministic_by_seed_and_cover_labels():
    first = pick_shots(TRAIN, 3, seed=0, by_label=True)
    assert first == pick_shots(TRAIN, 3, seed=0, by_label=True)
    assert {e.reference for e in first} == set(LABELS)
    assert all(e in TRAIN for e in first)
    five = pick_shots(TRAIN, 5, seed=0, by_label=True)
    assert len(five) == 5 and len(set(five)) == 5 and set(first) <= set(five)
    seeds = {pick_shots(TRAIN, 3, seed=s, by_label=True) for s in range(5)}
    assert len(seeds) > 1, "different seeds should pick different examples"


def test_shots_never_exceed_the_pool():
    assert len(pick_shots(TRAIN[:2], 5, seed=0, by_label=True)) == 2
    assert len(pick_shots(TRAIN, 4, seed=0, by_label=False)) == 4
    assert pick_shots([], 3, seed=0, by_label=True) == ()


def test_kshot_chat_has_system_instruction_shots_then_question():
    (zero, kshot) = base_variants(
        ["base_0shot", "base_kshot"], "Name the intent.", LABELS, TRAIN, 3, 0
    )
    question = (Message("user", "Where is my card?"),)
    chat = variant_messages(kshot, question)
    assert chat[0] == Message("system", "Name the intent.\n\n" + label_instruction(LABELS))
    assert [m.role for m in chat[1:]] == ["user", "assistant"] * 3 + ["user"]
    assert {m.content for m in chat[2:-1:2]} == set(LABELS)
    assert chat[-1] == question[0]
    assert variant_messages(zero, question) == (chat[0], question[0])
    assert "3-shot with the labels listed" in kshot.description


def test_own_system_message_wins_and_tuned_prompt_is_the_training_prompt(tiny_model_dir):
    prompt = (Message("system", "Be brief."), Message("user", "hi"))
    zero = base_variants(["base_0shot"], "Name the intent.", LABELS, TRAIN, 3, 0)[0]
    assert variant_messages(zero, prompt)[0].content.startswith(
        "Be brief.\n\nAnswer with exactly one of"
    )
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tuned = Variant("tuned", "tuned", "tuned", "Name the intent.")
    for question in ((Message("user", "hi"),), prompt):
        trained_as = ChatTokenizer(tokenizer, "Name the intent.", 64).prompt_text(question)
        assert (
            ChatTokenizer(tokenizer, None, 64).prompt_text(variant_messages(tuned, question))
            == trained_as
        )


def test_generation_tasks_get_shots_but_no_label_list():
    train = [
        Example(messages=(Message("user", f"q{i}"), Message("assistant", f"a{i}")))
        for i in range(8)
    ]
    zero, kshot = base_variants(["base_0shot", "base_kshot"], None, None, train, 2, 0)
    assert zero.instruction is None and len(kshot.shots) == 2
    chat = variant_messages(kshot, (Message("user", "q?"),))
    assert [m.role for m in chat] == ["user", "assistant", "user", "assistant", "user"]
