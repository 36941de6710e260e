"""`tunewright data inspect`: untrained tokens dimmed, and a loud failure when EOS is not trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.data.inspect import inspect_examples, render_tokens
from tunewright.dataset.example import Example, Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.models import load_tokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    return ChatTokenizer(load_tokenizer(str(tiny_model_dir)), "Name the intent.", max_seq_len=128)


def example(weight: float | None = None) -> Example:
    return Example(
        messages=(
            Message("user", "I lost my card."),
            Message("assistant", "lost_or_stolen_card", weight),
        ),
        source="f.jsonl:1",
    )


def test_untrained_tokens_are_dimmed_and_trained_ones_bold(chat):
    text = render_tokens(chat, chat.encode_example(example()))
    styled = [(text.plain[span.start : span.end], span.style) for span in text.spans]
    dimmed = "".join(piece for piece, style in styled if "dim" in style)
    bold = "".join(piece for piece, style in styled if "bold" in style)
    assert "Name the intent." in dimmed and "I lost my card." in dimmed
    assert bold == "lost_or_stolen_card<|im_end|>"


def test_eos_check_passes_and_fails_loudly(chat):
    console = Console(record=True, width=200)
    report = inspect_examples(chat, [example()], console, show=1)
    assert report.eos_ok and report.checked == 1
    assert "is trained in all 1 checked examples" in console.export_text()

    console = Console(record=True, width=200)
    report = inspect_examples(chat, [example(), example(weight=0.0)], console, show=0)
    assert not report.eos_ok and report.eos_untrained == ["f.jsonl:1"]
    assert "is NOT trained in 1 of 2 examples" in console.export_text()


def test_cli_prepares_then_prints_samples(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "data": {"train_files": [str(FIXTURES / "intents_train.csv")], "test_files": [str(FIXTURES / "intents_test.csv")],
                 "columns": {"label": "category"}, "system_prompt": "Name the intent.", "max_seq_len": 64},
    }))  # fmt: skip
    result = CliRunner().invoke(app, ["data", "inspect", str(recipe), "-n", "2", "--split", "test"])
    assert result.exit_code == 0, result.output
    assert result.output.count("<|im_start|>assistant") == 2
    assert "end-of-turn token '<|im_end|>' is trained" in result.output
    assert (tmp_path / "runs" / "tiny" / "data" / "summary.json").is_file()
