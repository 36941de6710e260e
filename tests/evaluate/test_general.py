"""The forgetting check: the bundled general set, lenient scoring and the base-vs-tuned sentence."""

import tomllib
from pathlib import Path

from tunewright.evaluate.general import contains_reference, forgetting_summary, general_set


def test_general_set_is_well_formed_and_shipped():
    items = general_set()
    assert 40 <= len(items) <= 60
    assert len({i.id for i in items}) == len(items) and len({i.prompt for i in items}) == len(items)
    assert all(
        item.prompt.strip() and item.answers and all(a.strip() for a in item.answers)
        for item in items
    )
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert (
        "evaluate/general_set.jsonl"
        in pyproject["tool"]["setuptools"]["package-data"]["tunewright"]
    )


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
    assert summary["test"]["p_value"] < 0.05
    assert summary["base_accuracy"] == 1.0 and len(summary["rows"]) == n
    assert summary["rows"][-1]["tuned"] == {"answer": "zzz", "right": False}


def test_no_change_is_no_significant_loss():
    n = len(general_set())
    summary = forgetting_summary(_answers(n - 2), _answers(n - 3))
    assert summary["sentence"].startswith("No significant loss on general questions (p = ")
    assert f"base {n - 2}/{n}, tuned {n - 3}/{n} right" in summary["sentence"]
