"""The last line of `tunewright run`."""

from __future__ import annotations

from types import SimpleNamespace

from tunewright.pipeline import done_line


def test_done_line_says_what_was_achieved_and_what_each_stage_took():
    tuned = SimpleNamespace(metrics={"accuracy": {"value": 0.8034, "low": 0.75, "high": 0.85}})
    result = SimpleNamespace(
        models={"tuned": tuned},
        headline="accuracy",
        n_examples=300,
        test_rows=300,
        general=None,
    )
    trained = SimpleNamespace(
        out_of_time=True, seconds=301.2, steps=313, tokens_per_second=661.7, precision="bf16"
    )
    line = done_line(result, trained, seconds=649.8, prepare_seconds=3.2, evaluate_seconds=121.9)
    assert line == (
        "done in 10 min 49 s: tuned accuracy 80.3% on 300 test rows; prepare 3 s, train 301 s "
        "(time budget) (313 steps, 662 tokens/s, bf16), evaluate 122 s"
    )

    # evaluation cut short by evaluate.max_minutes says how many of the test rows it scored
    result.n_examples = 192
    assert "80.3% on 192 of 300 test rows;" in done_line(
        result, trained, seconds=1, prepare_seconds=1, evaluate_seconds=1
    )

    # the forgetting check's outcome, when it ran
    result.general = {"n": 160, "base_accuracy": 83 / 160, "tuned_accuracy": 76 / 160}
    result.general["passed"] = False
    assert "192 of 300 test rows; forgetting check failed (76/160 general answers right, base " in (
        done_line(result, trained, seconds=1, prepare_seconds=1, evaluate_seconds=1)
    )
