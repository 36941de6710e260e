"""lm-evaluation-harness on the tiny model with local task files, with the network cut off."""

from __future__ import annotations

import json
import socket

import datasets  # noqa: F401  imported before the harness runs, as in a full test session
import pytest
import torch
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.config import RunConfig, save_config
from tunewright.errors import TunewrightError
from tunewright.evaluate.harness import TASKS_DIR, harness, harness_table

FIVE_QUESTIONS = [
    {"q": "How many wheels does a bicycle have?", "options": ["One", "Two", "Three"], "gold": 1},
    {"q": "What colour is snow?", "options": ["White", "Black", "Red"], "gold": 0},
    {"q": "How many hours are in a day?", "options": ["12", "24", "48"], "gold": 1},
    {"q": "Which animal says moo?", "options": ["Cat", "Dog", "Cow"], "gold": 2},
    {"q": "What is 3 + 4?", "options": ["7", "6", "8"], "gold": 0},
]
TASK_YAML = """\
task: five_questions
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/five.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{q}}\\nA:"
doc_to_choice: "{{options}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


LOCAL = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Only loopback: name lookups and connections elsewhere are refused and recorded (a library
    may swallow the error and carry on, as datasets does with its download-count ping)."""
    connect, getaddrinfo, attempts = socket.socket.connect, socket.getaddrinfo, []

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            attempts.append(address)
            raise OSError(f"network access in a test: {address}")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL:
            attempts.append(host)
            raise OSError(f"name lookup in a test: {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield
    assert attempts == [], f"the harness tried to reach {attempts}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A run folder as LoRA training leaves it, with a random non-zero adapter: training is not
    under test here, only that the harness finds, merges and scores the run's tuned model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = RunConfig(
        name="tuned",
        output_dir=str(tmp_path_factory.mktemp("harness-runs")),
        model={"name": str(tiny_model_dir)},
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, adapter).save_pretrained(cfg.run_dir / "adapter")
    save_config(cfg, cfg.run_dir / "config.yaml")
    return cfg.run_dir


@pytest.fixture
def task_folder(tmp_path):
    """A task folder elsewhere, its data beside it under a relative path."""
    folder = tmp_path / "my-tasks"
    (folder / "data").mkdir(parents=True)
    (folder / "five.yaml").write_text(TASK_YAML)
    (folder / "data" / "five.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in FIVE_QUESTIONS)
    )
    return folder


def test_the_shipped_task_on_base_and_tuned(tiny_run):
    result = harness(tiny_run, batch_size=16)
    assert list(result.models) == ["base", "tuned"]
    n_questions = len((TASKS_DIR / "general_mc.jsonl").read_text().splitlines())
    assert n_questions == 20
    for scores in result.models.values():
        row = scores["tunewright_general_mc"]
        assert row["n_samples"] == n_questions
        assert set(row["metrics"]) == {"acc", "acc_norm"}
        for cell in row["metrics"].values():
            assert 0.0 <= cell["value"] <= 1.0 and cell["stderr"] >= 0.0
            # 20 right/wrong outcomes: accuracy is a multiple of 1/20
            assert cell["value"] * n_questions == pytest.approx(round(cell["value"] * n_questions))
    comparison = result.comparisons["tunewright_general_mc"]
    assert comparison["metric"] == "acc"
    delta = (
        result.models["tuned"]["tunewright_general_mc"]["metrics"]["acc"]["value"]
        - result.models["base"]["tunewright_general_mc"]["metrics"]["acc"]["value"]
    )
    assert comparison["delta"] == pytest.approx(delta)
    assert comparison["low"] <= comparison["delta"] <= comparison["high"]
    assert result.path == tiny_run / "eval" / "harness.json"
    saved = json.loads(result.path.read_text())
    assert saved["models"] == result.models and saved["tasks"] == ["tunewright_general_mc"]
    assert harness_table(result).row_count == 2


def test_an_included_folder_with_relative_data_and_a_plain_model(
    tiny_model_dir, task_folder, tmp_path
):
    out = tmp_path / "out" / "harness.json"
    result = harness(tiny_model_dir, ["five_questions"], include=[task_folder], output=out)
    assert list(result.models) == ["base"] and result.comparisons == {}
    row = result.models["base"]["five_questions"]
    assert row["n_samples"] == 5
    assert 0.0 <= row["metrics"]["acc"]["value"] <= 1.0
    assert json.loads(out.read_text())["models"]["base"]["five_questions"]["n_samples"] == 5
    assert (
        harness(
            tiny_model_dir, ["five_questions"], include=[task_folder], limit=2, output=out
        ).models["base"]["five_questions"]["n_samples"]
        == 2
    )


def test_unknown_task_and_missing_folder_are_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(
        TunewrightError,
        match="unknown harness task 'hellaswag'; local tasks: tunewright_general_mc",
    ):
        harness(tiny_model_dir, ["hellaswag"], output=tmp_path / "h.json")
    with pytest.raises(TunewrightError, match="task folder not found"):
        harness(
            tiny_model_dir,
            ["tunewright_general_mc"],
            include=[tmp_path / "nope"],
            output=tmp_path / "h.json",
        )


def test_cli(tiny_run, task_folder):
    result = CliRunner().invoke(
        app,
        [
            "harness",
            str(tiny_run),
            "--tasks",
            "tunewright_general_mc,five_questions",
            "--include",
            str(task_folder),
            "--limit",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "five_questions" in result.output and "tunewright_general_mc" in result.output
    saved = json.loads((tiny_run / "eval" / "harness.json").read_text())
    assert {t: r["n_samples"] for t, r in saved["models"]["tuned"].items()} == {
        "tunewright_general_mc": 3,
        "five_questions": 3,
    }
    bad = CliRunner().invoke(app, ["harness", str(tiny_run), "--tasks", "nope"])
    assert bad.exit_code == 1 and "unknown harness task 'nope'" in bad.output
