"""The forgetting check: the bundled general set, lenient scoring and the base-vs-tuned sentence."""

import tomllib
from pathlib import Path

from tunewright.evaluate.general import contains_reference, forgetting_summary, general_set
from tunewright.evaluate.metrics import normalize_answer

# These instructions name their own answer (repeat a word, say yes, pick one of two numbers); they
# are kept as they were so that scores stay comparable with earlier runs, but no new item may.
ANSWER_IN_QUESTION = {"g49", "g50", "g52"}


def test_general_set_is_well_formed_and_shipped():
    items = general_set()
    assert len(items) == 160
    assert [item.id for item in items] == [f"g{k:02d}" for k in range(1, len(items) + 1)]
    assert len({normalize_answer(item.prompt) for item in items}) == len(items)
    assert all(item.prompt.strip() and item.answers for item in items)
    # a reference that normalises to nothing ("A", "the") could never be found in an answer
    assert all(normalize_answer(a) for item in items for a in item.answers)
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert (
        "evaluate/general_set.jsonl"
        in pyproject["tool"]["setuptools"]["package-data"]["tunewright"]
    )


def test_no_reference_is_given_away_by_its_question():
    # a model that only echoed the question would otherwise score on it
    echoed = {
        item.id
        for item in general_set()
        for a in item.answers
        if f" {normalize_answer(a)} " in f" {normalize_answer(item.prompt)} "
    }
    assert echoed == ANSWER_IN_QUESTION


def test_reference_is_found_leniently_but_as_whole_words():
    assert contains_reference("The capital of France is Paris.", ("Paris",))
    assert contains_reference("  **paris**", ("Paris",))
    assert contains_reference("It's carbon dioxide (CO2).", ("carbon dioxide", "CO2"))
    assert contains_reference("6 x 7 = 42", ("42", "forty-two"))
    assert not contains_reference("Parisian food", ("Paris",))
    assert not contains_reference("142", ("42",))
    assert not contains_reference("", ("Paris",))


def _answers(right: int) -> list[str]:
    """The first `right` questions answered with their reference, the rest with nonsense."""
    return [item.answers[0] if k < right else "zzz" for k, item in enumerate(general_set())]


def test_a_large_loss_is_reported_with_its_size_and_p_value():
    n = len(general_set())
    summary = forgetting_summary(_answers(n), _answers(n - 30))
    assert summary["sentence"].startswith(
        f"General answers got worse by {30 / n * 100:.1f} pts (p = "
    )
    assert summary["test"]["p_value"] < 0.05 and not summary["passed"]
    assert summary["base_accuracy"] == 1.0 and len(summary["rows"]) == n
    assert summary["rows"][-1]["tuned"] == {"answer": "zzz", "right": False}


def test_no_change_is_no_significant_loss():
    n = len(general_set())
    summary = forgetting_summary(_answers(n - 2), _answers(n - 3))
    assert summary["sentence"].startswith("No significant loss on general questions (p = ")
    assert f"base {n - 2}/{n}, tuned {n - 3}/{n} right" in summary["sentence"]
    assert summary["passed"]


def test_a_loss_beyond_the_margin_fails_even_when_not_significant():
    items = general_set()
    n = len(items)

    def right_on(indices) -> list[str]:
        return [item.answers[0] if k in indices else "zzz" for k, item in enumerate(items)]

    # 7 questions lost, 1 gained: -3.75 points, McNemar p = 0.07
    summary = forgetting_summary(right_on(range(100)), right_on(range(7, 101)))
    assert summary["test"]["p_value"] >= 0.05 and not summary["passed"]
    assert summary["sentence"].startswith(f"General answers fell by {6 / n * 100:.1f} pts (p = ")
    assert "3-point margin" in summary["sentence"]
    # within the margin: passes
    summary = forgetting_summary(right_on(range(100)), right_on(range(4, 100)))
    assert summary["passed"] and summary["sentence"].startswith("No significant loss")
