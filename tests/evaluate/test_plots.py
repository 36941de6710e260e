"""The confusion matrix keeps the most frequent labels and merges the rest without losing counts."""

import numpy as np

from tunewright.evaluate.plots import confusion_top


def test_top_labels_keep_every_count():
    labels = ["a", "b", "c", "d"]
    refs = ["a"] * 5 + ["b"] * 4 + ["c"] * 2 + ["d"]
    preds = ["a"] * 4 + [None] + ["b", "b", "a", "c"] + ["c", "d"] + ["a"]
    matrix, rows, cols = confusion_top(preds, refs, labels, top=2)
    assert rows == ["a", "b", "other"] and cols == ["a", "b", "other", "invalid"]
    assert matrix.sum() == len(refs)
    assert matrix.tolist() == [[4, 0, 0, 1], [1, 2, 1, 0], [1, 0, 2, 0]]


def test_few_labels_need_no_other_row():
    matrix, rows, cols = confusion_top(["x", "y"], ["x", "x"], ["x", "y"], top=15)
    assert rows == ["x", "y"] and cols == ["x", "y", "invalid"]
    assert np.array_equal(matrix, [[1, 1, 0], [0, 0, 0]])
