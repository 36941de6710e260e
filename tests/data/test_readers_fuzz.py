"""Random bytes and random JSON fed to the readers and normalisers: no unhandled exception.

A reader may refuse a whole file with `DataError` (a message for the user); anything else that
escapes is a bug. Every row read must come out either as an example or as a quarantine entry.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunewright.config import DataConfig
from tunewright.data.collect import Collector
from tunewright.errors import DataError

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".md", ".html", ".parquet"]
FORMATS = ["auto", "messages", "prompt_completion", "alpaca", "sharegpt", "text", "text_label"]
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
chat_like = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.dictionaries(
                st.sampled_from(["role", "content", "weight", "x"]),
                st.sampled_from(["user", "assistant", "system", "robot", "", "hi"]) | json_values,
                max_size=3,
            ),
            max_size=4,
        )
    }
)
rows = st.dictionaries(
    st.sampled_from(["messages", "conversations", "prompt", "completion", "instruction", "input",
                     "output", "text", "label", "other"]),
    json_values,
    max_size=4,
) | chat_like  # fmt: skip


def run_collector(path: Path, fmt: str = "auto") -> None:
    collector = Collector(DataConfig(format=fmt), strict=False)
    try:
        collected = collector.collect([path])
    except DataError:
        return
    assert collected.rows_read == len(collected.examples) + len(collected.quarantine)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_never_crash_a_reader(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        run_collector(path)


@FUZZ
@given(
    values=st.lists(rows | json_values, max_size=5),
    fmt=st.sampled_from(FORMATS),
    as_array=st.booleans(),
)
def test_random_json_rows_are_examples_or_quarantined(values, fmt, as_array):
    with tempfile.TemporaryDirectory() as tmp:
        if as_array:
            path = Path(tmp) / "fuzz.json"
            path.write_text(json.dumps(values))
        else:
            path = Path(tmp) / "fuzz.jsonl"
            path.write_text("".join(json.dumps(v) + "\n" for v in values))
        run_collector(path, fmt)


@FUZZ
@given(cells=st.lists(st.lists(st.text(max_size=15), min_size=1, max_size=4), max_size=5))
def test_random_csv_cells_are_examples_or_quarantined(cells):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.csv"
        lines = ["text,label", *(",".join(json.dumps(c) for c in row) for row in cells)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        run_collector(path)
