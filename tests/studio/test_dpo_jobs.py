"""`method: {type: "dpo"}` through the official `openai` client: a file of preference pairs in
OpenAI's DPO format trains `train.objective: dpo`, and a file of the wrong kind is refused."""

from __future__ import annotations

import csv
import json

import openai
import pytest
import yaml

from tests.studio.conftest import FAST, FIXTURES, SYSTEM, chat_jsonl
from tests.studio.test_api import wait
from tunewright.runs import RunFolder


@pytest.fixture(scope="module")
def pairs_jsonl() -> bytes:
    """The intents fixture as OpenAI DPO rows: the right intent preferred over another one."""
    with (FIXTURES / "intents_train.csv").open() as f:
        rows = list(csv.DictReader(f))
    labels = sorted({r["category"] for r in rows})
    return chat_jsonl(
        [
            {
                "input": {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": r["text"]},
                    ]
                },
                "preferred_output": [{"role": "assistant", "content": r["category"]}],
                "non_preferred_output": [
                    {"role": "assistant", "content": labels[labels.index(r["category"]) - 1]}
                ],
            }
            for r in rows
        ]
    )


@pytest.mark.slow
def test_a_dpo_job_trains_on_preference_pairs(client, studio, pairs_jsonl, tiny_model_dir):
    uploaded = client.files.create(file=("pairs.jsonl", pairs_jsonl), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=uploaded.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "batch_size": 4}}},
        metadata={"tunewright_overrides": FAST},
    )
    assert job.method.type == "dpo" and job.hyperparameters.beta == 0.25
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    run = RunFolder(studio.studio.runs_dir / job.id)
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    assert config["train"]["objective"] == "dpo" and config["train"]["beta"] == 0.25
    assert config["data"]["format"] == "openai_preference"
    metrics = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert any(any("reward" in key for key in row) for row in metrics), metrics[:2]
    answer = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "I lost my card"}],
        max_tokens=4,
    )
    assert answer.choices[0].message.content is not None


def test_a_file_of_the_wrong_kind_is_refused(client, pairs_jsonl, intents_jsonl, tiny_model_dir):
    pairs = client.files.create(file=("pairs.jsonl", pairs_jsonl), purpose="fine-tune")
    chats = client.files.create(file=("chats.jsonl", intents_jsonl), purpose="fine-tune")
    for method, file_id, needs in (
        ({"type": "supervised"}, pairs.id, "chat examples"),
        ({"type": "dpo"}, chats.id, "preference pairs"),
    ):
        before = len(client.fine_tuning.jobs.list(limit=100).data)
        with pytest.raises(openai.BadRequestError, match=needs) as caught:
            client.fine_tuning.jobs.create(
                model=tiny_model_dir.name, training_file=file_id, method=method
            )
        assert caught.value.body["param"] == "training_file"
        assert len(client.fine_tuning.jobs.list(limit=100).data) == before  # nothing written


def test_a_bad_pair_is_refused_on_upload_with_its_line(client):
    bad = chat_jsonl(
        [
            {
                "input": {"messages": [{"role": "user", "content": "hi"}]},
                "preferred_output": [{"role": "assistant", "content": "same"}],
                "non_preferred_output": [{"role": "assistant", "content": "same"}],
            }
        ]
    )
    with pytest.raises(openai.BadRequestError, match=r"preference pairs .*pairs\.jsonl:1: "):
        client.files.create(file=("pairs.jsonl", bad), purpose="fine-tune")
