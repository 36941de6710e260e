"""Tests for tunewright.evaluate.metrics, against values computed by hand."""

import math

import numpy as np
import pytest

from tunewright.evaluate.metrics import (
    accuracy,
    confusion_matrix,
    encode_labels,
    exact_match,
    macro_f1,
    macro_f1_from_codes,
    per_label_table,
    perplexity,
    rouge_l,
    stop_rate,
    token_f1,
)

LABELS = ["a", "b", "c", "d"]
PREDS = ["a", "b", None, "a", "c"]
REFS = ["a", "b", "b", "c", "c"]


def test_accuracy() -> None:
    # Correct at positions 0, 1 and 4; the None at position 2 is wrong: 3 / 5.
    assert accuracy(PREDS, REFS) == pytest.approx(0.6)


def test_confusion_matrix_counts_invalid_in_last_column() -> None:
    # Rows are references a, b, c, d; columns predictions a, b, c, d, invalid.
    expected = np.array(
        [
            [1, 0, 0, 0, 0],  # ref a: predicted a
            [0, 1, 0, 0, 1],  # ref b: predicted b once, None once
            [1, 0, 1, 0, 0],  # ref c: predicted a once, c once
            [0, 0, 0, 0, 0],  # ref d: no examples
        ]
    )
    np.testing.assert_array_equal(confusion_matrix(PREDS, REFS, LABELS), expected)


def test_prediction_outside_label_set_is_invalid() -> None:
    matrix = confusion_matrix(["zzz", "a"], ["a", "a"], ["a", "b"])
    np.testing.assert_array_equal(matrix, [[1, 0, 1], [0, 0, 0]])


def test_macro_f1_leaves_out_labels_with_neither_examples_nor_predictions() -> None:
    # a: TP 1, predicted 2, support 1 -> F1 = 2*1 / (2+1) = 2/3
    # b: TP 1, predicted 1, support 2 -> F1 = 2/3
    # c: TP 1, predicted 1, support 2 -> F1 = 2/3
    # d: never predicted, no support -> says nothing: left out of the mean
    assert macro_f1(PREDS, REFS, LABELS) == pytest.approx(2 / 3)


def test_macro_f1_bootstrap_interval_holds_the_point_estimate_with_many_rare_labels() -> None:
    from tunewright.evaluate.stats import bootstrap_ci_fn

    rng = np.random.default_rng(0)
    labels = [f"l{i}" for i in range(77)]
    refs = [labels[i % 77] for i in range(300)]  # ~4 examples per label, as a 300-row sample
    preds = [r if rng.random() < 0.8 else labels[rng.integers(77)] for r in refs]
    pred_codes, ref_codes = encode_labels(preds, refs, labels)
    point = macro_f1(preds, refs, labels)
    ci = bootstrap_ci_fn(300, lambda i: macro_f1_from_codes(pred_codes[i], ref_codes[i], 77))
    assert ci.low < point < ci.high


def test_macro_f1_label_never_predicted() -> None:
    # a: TP 1, predicted 2, support 1 -> 2/3; b: support 1, never predicted -> 0. Mean = 1/3.
    assert macro_f1(["a", "a"], ["a", "b"], ["a", "b"]) == pytest.approx(1 / 3)


def test_macro_f1_from_codes_matches_macro_f1() -> None:
    pred_codes, ref_codes = encode_labels(PREDS, REFS, LABELS)
    np.testing.assert_array_equal(pred_codes, [0, 1, 4, 0, 2])
    assert macro_f1_from_codes(pred_codes, ref_codes, len(LABELS)) == macro_f1(PREDS, REFS, LABELS)


def test_per_label_table() -> None:
    rows = {row["label"]: row for row in per_label_table(PREDS, REFS, LABELS)}
    assert list(rows) == LABELS
    # a: precision 1/2 (two predictions, one right), recall 1/1.
    assert rows["a"] == pytest.approx(
        {"label": "a", "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    # b: precision 1/1, recall 1/2 (the None prediction is a miss).
    assert rows["b"] == pytest.approx(
        {"label": "b", "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    # c: precision 1/1, recall 1/2 (one c was predicted as a).
    assert rows["c"] == pytest.approx(
        {"label": "c", "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert rows["d"] == {"label": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        macro_f1([], [], LABELS)
    with pytest.raises(ValueError, match="missing from the label set"):
        macro_f1(["a"], ["zzz"], LABELS)


def test_exact_match_squad_normalisation() -> None:
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("an  apple.", "Apple") == 1.0
    assert exact_match("a cat", "dog") == 0.0


def test_token_f1() -> None:
    # pred tokens [cat, sat, on, mat], ref tokens [cat, on, hat] (articles dropped).
    # overlap 2 -> P = 2/4, R = 2/3, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7.
    assert token_f1("The cat sat on the mat.", "a cat on a hat") == pytest.approx(4 / 7)
    # Bag of tokens: overlap min(2, 1) = 1 -> P = 1/2, R = 1 -> F1 = 2/3.
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert token_f1("cat", "dog") == 0.0


def test_token_f1_empty_answers() -> None:
    assert token_f1("", "the") == 1.0  # both empty after normalisation
    assert token_f1("the", "cat") == 0.0


def test_rouge_l() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("completely different words", "nothing shared here") == 0.0
    # LCS "the cat on the mat" = 5 of 6 tokens each side -> P = R = F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # Porter stemming: cats -> cat, running -> run.
    assert rouge_l("cats running", "cat run") == pytest.approx(1.0)
    assert rouge_l("", "anything") == 0.0


def test_perplexity() -> None:
    # Mean NLL ln(5) per token -> perplexity 5.
    assert perplexity(10 * math.log(5), 10) == pytest.approx(5.0)
    assert perplexity(0.0, 3) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="total_tokens"):
        perplexity(1.0, 0)


def test_stop_rate() -> None:
    assert stop_rate([True, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="empty"):
        stop_rate([])
