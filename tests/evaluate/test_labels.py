"""Tests for tunewright.evaluate.labels: normalising and matching generations to labels."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewright.evaluate.labels import LabelMatch, LabelMatcher, match_label, normalize_label

BANKING_LABELS = [
    "card_arrival",
    "exchange_rate",
    "card_payment_wrong_exchange_rate",
    "pin_blocked",
    "top_up_failed",
    "Refund_not_showing_up",
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card_arrival", "card arrival"),
        ("  Card Arrival.  ", "card arrival"),
        ('"card-arrival"', "card arrival"),
        ("`card_arrival`!", "card arrival"),
        ("**Card_Arrival**", "card arrival"),
        ("\u201ccard arrival.\u201d", "card arrival"),
        ("card __ - arrival", "card arrival"),
        ("- card_arrival", "card arrival"),
        ("", ""),
    ],
)
def test_normalize_label(text: str, expected: str) -> None:
    assert normalize_label(text) == expected


@pytest.mark.parametrize(
    "answer",
    ["card_arrival", "Card arrival.", '"card-arrival"', "  CARD ARRIVAL\nbecause the card is late"],
)
def test_strict_match_on_first_line(answer: str) -> None:
    assert match_label(answer, BANKING_LABELS) == LabelMatch(label="card_arrival", strict=True)


def test_label_keeps_its_original_spelling() -> None:
    assert match_label("refund not showing up", BANKING_LABELS).label == "Refund_not_showing_up"


def test_lenient_match_inside_sentence() -> None:
    match = match_label("I think the intent is card_arrival, since they ask", BANKING_LABELS)
    assert match == LabelMatch(label="card_arrival", strict=False)


def test_lenient_match_on_a_later_line() -> None:
    match = match_label("Let me think.\nAnswer: top-up failed", BANKING_LABELS)
    assert match == LabelMatch(label="top_up_failed", strict=False)


@pytest.mark.parametrize("labels", [BANKING_LABELS, list(reversed(BANKING_LABELS))])
def test_longest_label_wins(labels: list[str]) -> None:
    answer = "Intent: card_payment_wrong_exchange_rate"
    assert match_label(answer, labels).label == "card_payment_wrong_exchange_rate"


def test_equal_length_labels_first_mention_wins() -> None:
    labels = ["lost_card", "late_card"]  # both 9 characters after normalisation
    assert match_label("lost card or late card", labels).label == "lost_card"
    assert match_label("late card or lost card", labels).label == "late_card"


def test_lenient_match_needs_word_boundaries() -> None:
    assert match_label("the spinning wheel", ["pin"]).label is None
    assert match_label("my pin, again", ["pin"]) == LabelMatch(label="pin", strict=False)


def test_no_label_is_invalid() -> None:
    assert match_label("I am not sure.", BANKING_LABELS) == LabelMatch(label=None, strict=False)
    assert match_label("", BANKING_LABELS) == LabelMatch(label=None, strict=False)


def test_matcher_reuse_matches_function() -> None:
    matcher = LabelMatcher(BANKING_LABELS)
    answers = ["card_arrival", "the exchange rate was bad", "nothing"]
    assert matcher.match_many(answers) == [match_label(a, BANKING_LABELS) for a in answers]


def test_colliding_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="both normalise to 'card arrival'"):
        LabelMatcher(["card_arrival", "Card Arrival"])
    with pytest.raises(ValueError, match="empty"):
        LabelMatcher([])
    with pytest.raises(ValueError, match="empty after normalisation"):
        LabelMatcher(["ok", "__"])


_words = st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=6)
_label = st.lists(_words, min_size=1, max_size=4).flatmap(
    lambda words: st.sampled_from(["_", "-", " "]).map(lambda sep: sep.join(words))
)


@settings(max_examples=50, deadline=None)
@given(st.lists(_label, min_size=1, max_size=20, unique_by=normalize_label), st.data())
def test_every_label_matches_itself_strictly(labels: list[str], data: st.DataObject) -> None:
    label = data.draw(st.sampled_from(labels))
    assert LabelMatcher(labels).match(label.upper() + ".") == LabelMatch(label=label, strict=True)
