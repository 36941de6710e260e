"""The LLM judge against a real local HTTP server that plays the judge and counts its calls."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import uvicorn
import yaml
from fastapi import FastAPI, Request
from rich.console import Console

from tunewright.config import JudgeConfig, load_config
from tunewright.errors import ConfigError, TunewrightError
from tunewright.evaluate.judge import judge_answers, parse_reply, verdict_metrics

FIXTURES = Path(__file__).parents[1] / "fixtures"
KEY_ENV = "TUNEWRIGHT_TEST_JUDGE_KEY"


class FakeJudge:
    """Rates an answer 5 when it equals the reference, 2 otherwise; 'garbage' gets no rating."""

    def __init__(self):
        self.calls: list[dict] = []
        self.auth: list[str | None] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(request: Request):
            body = await request.json()
            self.calls.append(body)
            self.auth.append(request.headers.get("authorization"))
            user = body["messages"][-1]["content"]
            reference = user.split("[Reference answer]\n")[1].split("\n\n[Assistant's answer]")[0]
            answer = user.split("[Assistant's answer]\n")[1]
            if "garbage" in answer:
                reply = "I would rather not say."
            elif "[[PASS]]" in body["messages"][0]["content"]:
                reply = "Matches. [[PASS]]" if answer == reference else "Verdict: FAIL"
            else:
                reply = (
                    "On a scale of 1 to 5: same answer. [[5]]"
                    if answer == reference
                    else "Different. Rating: 2"
                )
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply},
                    }
                ],
            }

        self.app = app


@pytest.fixture(scope="module")
def judge_server():
    judge = FakeJudge()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(judge.app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the judge server did not start"
        thread.join(timeout=0.05)
    judge.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    yield judge
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def judge(judge_server, monkeypatch):
    judge_server.calls.clear()
    judge_server.auth.clear()
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return judge_server


def config(judge, **overrides) -> JudgeConfig:
    settings = {"enabled": True, "base_url": judge.url, "model": "judge-1", "api_key_env": KEY_ENV}
    return JudgeConfig(**settings | overrides)


PROMPTS = ["Capital of France?", "2 + 2?", "Colour of the sky?"]
REFS = ["Paris", "4", "blue"]


def test_scores_are_parsed_and_a_rerun_makes_no_calls(judge, tmp_path):
    cache = tmp_path / "eval" / "judge_cache.jsonl"
    verdicts = judge_answers(config(judge), PROMPTS, ["Paris", "5", "blue"], REFS, cache)
    assert [v.score for v in verdicts] == [5.0, 2.0, 5.0]
    assert not any(v.cached for v in verdicts)
    assert len(judge.calls) == 3
    assert all(c["temperature"] == 0 and c["model"] == "judge-1" for c in judge.calls)
    assert judge.auth == ["Bearer sk-test"] * 3
    assert "sk-test" not in cache.read_text()  # the key is never stored

    again = judge_answers(config(judge), PROMPTS, ["Paris", "5", "blue"], REFS, cache)
    assert len(judge.calls) == 3, "a rerun must be answered from the cache"
    assert [v.score for v in again] == [5.0, 2.0, 5.0] and all(v.cached for v in again)

    metrics = verdict_metrics(again)
    assert metrics["judge_score"]["value"] == pytest.approx(4.0)
    assert metrics["judge_score"]["low"] <= 4.0 <= metrics["judge_score"]["high"]
    assert metrics["judge_unparsed_rate"]["value"] == 0.0


def test_changing_the_rubric_or_the_answer_asks_again(judge, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    judge_answers(config(judge), PROMPTS, REFS, REFS, cache)
    judge_answers(config(judge), PROMPTS, ["Paris", "4", "green"], REFS, cache)
    assert len(judge.calls) == 4  # only the changed answer
    verdicts = judge_answers(
        config(judge, scale="pass_fail"), PROMPTS, ["Paris", "4", "green"], REFS, cache
    )
    assert len(judge.calls) == 7
    assert [v.score for v in verdicts] == [1.0, 1.0, 0.0]
    judge_answers(config(judge, rubric="Be lenient."), PROMPTS, REFS, REFS, cache)
    assert len(judge.calls) == 10
    assert "Be lenient." in judge.calls[-1]["messages"][0]["content"]


def test_duplicate_questions_are_asked_once(judge, tmp_path):
    verdicts = judge_answers(config(judge), ["q"] * 4, ["a"] * 4, ["a"] * 4, tmp_path / "c.jsonl")
    assert len(judge.calls) == 1 and [v.score for v in verdicts] == [5.0] * 4


def test_an_unparsable_reply_is_recorded_not_raised(judge, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    verdicts = judge_answers(config(judge), PROMPTS, ["Paris", "garbage", "blue"], REFS, cache)
    assert [v.parsed for v in verdicts] == [True, False, True]
    assert verdicts[1].score is None and verdicts[1].reply == "I would rather not say."
    metrics = verdict_metrics(verdicts)
    assert metrics["judge_score"]["value"] == 5.0  # the mean of the readable verdicts
    assert metrics["judge_unparsed_rate"]["value"] == pytest.approx(1 / 3)
    judge_answers(config(judge), PROMPTS, ["Paris", "garbage", "blue"], REFS, cache)
    assert len(judge.calls) == 3  # unparsed verdicts are cached too


def test_a_truncated_cache_line_is_asked_again(judge, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    judge_answers(config(judge), PROMPTS, REFS, REFS, cache)
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # as a killed run leaves it
    assert [v.score for v in judge_answers(config(judge), PROMPTS, REFS, REFS, cache)] == [5.0] * 3
    assert len(judge.calls) == 4
    judge_answers(config(judge), PROMPTS, REFS, REFS, cache)
    assert len(judge.calls) == 4  # the repaired cache serves every verdict


def test_a_missing_api_key_is_a_clear_error(judge, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(TunewrightError, match=f"api_key_env names {KEY_ENV}, which is not set"):
        judge_answers(config(judge), PROMPTS, REFS, REFS, tmp_path / "c.jsonl")
    assert judge.calls == []
    # a server without authentication: no key needed
    judge_answers(config(judge, api_key_env=None), PROMPTS, REFS, REFS, tmp_path / "c.jsonl")
    assert len(judge.calls) == 3


def test_an_unreachable_judge_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    cfg = JudgeConfig(
        enabled=True, base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=KEY_ENV
    )
    with pytest.raises(TunewrightError, match="cannot reach the judge"):
        judge_answers(cfg, PROMPTS, REFS, REFS, tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    ("reply", "scale", "score"),
    [
        ("Good answer. [[4]]", "1-5", 4.0),
        ("Rate from 1 to 5. Rating: 3", "1-5", 3.0),
        ("**Score:** 5", "1-5", 5.0),
        ("I give it 2/5.", "1-5", 2.0),
        ("4", "1-5", 4.0),
        ("[[4.5]]", "1-5", 4.5),
        ("[[7]]", "1-5", None),
        ("Score: 0", "1-5", None),
        ("", "1-5", None),
        ("no idea", "1-5", None),
        ("Correct. [[PASS]]", "pass_fail", 1.0),
        ("Verdict: fail", "pass_fail", 0.0),
        ("PASS", "pass_fail", 1.0),
        ("[[3]]", "pass_fail", None),
    ],
)
def test_parse_reply(reply, scale, score):
    assert parse_reply(reply, scale) == score


def test_judge_config_needs_a_model_when_enabled(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# r\nevaluate:\n  judge:\n    enabled: true\n")
    with pytest.raises(ConfigError, match=r"name the judge model in evaluate\.judge\.model"):
        load_config(recipe)
    assert (
        load_config(recipe, ["evaluate.judge.model=gpt-4o-mini"]).evaluate.judge.model
        == "gpt-4o-mini"
    )
    assert load_config(None).evaluate.judge.enabled is False


def test_evaluate_adds_judge_metrics_per_model(judge, tmp_path, tiny_model_dir):
    """The runner's hook: every scored model gets judge_score, and a second evaluation asks nothing."""
    from tunewright.data.prepare import prepare
    from tunewright.evaluate.runner import evaluate

    recipe = tmp_path / "judged.yaml"
    recipe.write_text(
        "# judged\n"
        + yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "runs"),
                "model": {"name": str(tiny_model_dir)},
                "data": {
                    "train_files": [str(FIXTURES / "intents_train.csv")],
                    "test_files": [str(FIXTURES / "intents_test.csv")],
                    "columns": {"label": "category"},
                    "max_test_examples": 4,
                    "max_seq_len": 64,
                },
                "evaluate": {
                    "models": ["base_0shot"],
                    "max_new_tokens": 4,
                    "general_check": False,
                    "judge": {
                        "enabled": True,
                        "base_url": judge.url,
                        "model": "judge-1",
                        "api_key_env": KEY_ENV,
                    },
                },
            }
        )
    )
    cfg = load_config(recipe)
    quiet = Console(quiet=True)
    dataset = prepare(cfg, console=quiet)
    result = evaluate(cfg, dataset, None, console=quiet)
    score = result.models["base_0shot"].metrics["judge_score"]
    assert 1.0 <= score["value"] <= 5.0
    assert len(judge.calls) == len(
        {
            (e.prompt_messages[-1].content, a.text)
            for e, a in zip(dataset.test, result.models["base_0shot"].answers)
        }
    )
    saved = json.loads((cfg.run_dir / "eval" / "results.json").read_text())
    assert "judge_score" in saved["models"]["base_0shot"]["metrics"]
    assert (cfg.run_dir / "eval" / "judge_cache.jsonl").is_file()
    calls = len(judge.calls)
    evaluate(cfg, dataset, None, console=quiet)
    assert len(judge.calls) == calls
