"""The fine-tuning jobs API end to end with the official `openai` client: upload, create a job,
poll it to the end, read its events, then chat with the model it made on the same server."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.studio.conftest import FAST, KEY, SYSTEM, chat_jsonl

LONG = FAST.replace("train.max_steps=4", "train.max_steps=100000") + " train.epochs=10000"
from tunewright.errors import TunewrightError
from tunewright.runs import RunFolder
from tunewright.studio.server import start_studio
from tunewright.studio.settings import StudioSettings


def wait(client: OpenAI, job_id: str, until=("succeeded", "failed", "cancelled"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


@pytest.mark.slow
def test_upload_train_poll_and_chat_with_the_result(client, studio, intents_jsonl, tiny_model_dir):
    uploaded = client.files.create(file=("intents.jsonl", intents_jsonl), purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.bytes == len(intents_jsonl)
    assert client.files.content(uploaded.id).content == intents_jsonl
    assert uploaded.id in [f.id for f in client.files.list()]

    held_out = b"".join(intents_jsonl.splitlines(keepends=True)[:8])
    validation = client.files.create(file=("held_out.jsonl", held_out), purpose="fine-tune")
    base = tiny_model_dir.name
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=uploaded.id,
        validation_file=validation.id,
        suffix="intents",
        seed=7,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"batch_size": 8, "learning_rate_multiplier": 2}},
        },
        metadata={"tunewright_overrides": FAST},
    )
    assert job.status in ("queued", "running") and job.seed == 7
    assert job.hyperparameters.batch_size == 8 and job.fine_tuned_model is None

    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith(f"ft:{base}:tunewright:intents:")
    assert done.finished_at >= done.created_at

    # a studio run is an ordinary run folder
    run = RunFolder(studio.studio.runs_dir / job.id)
    assert run.trained().method == "lora" and (run.path / "job.log").is_file()
    results = json.loads((run.path / "eval" / "results.json").read_text())
    assert results["n_examples"] == 8  # the validation file is the test set the report scores

    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert events[0] == "The job has successfully completed"  # newest first
    assert any(m.startswith("Step 4/4: training loss=") for m in events), events
    assert any(m.startswith("Evaluation: tuned ") for m in events), events
    assert events[-1].startswith("Validating training file")
    metrics = [
        e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"
    ]
    assert [e.data["step"] for e in metrics if "train_loss" in e.data][::-1] == [1, 2, 3, 4]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]  # newest first
    assert checkpoints[0].fine_tuning_job_id == job.id and checkpoints[0].metrics.step == 4

    # the result is served without a restart, next to the base model
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "I lost my card."}],
        max_tokens=4,
        temperature=0,
    )
    assert answer.model == done.fine_tuned_model and answer.choices[0].finish_reason

    listed = client.fine_tuning.jobs.list(limit=10)
    assert job.id in [j.id for j in listed.data]


@pytest.mark.slow
def test_cancel_stops_a_running_job_within_seconds(client, intents_jsonl, tiny_model_dir):
    uploaded = client.files.create(file=("intents.jsonl", intents_jsonl), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=uploaded.id,
        metadata={"tunewright_overrides": LONG},
    )
    deadline = time.monotonic() + 60
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id)):
        assert time.monotonic() < deadline, "the job never reported a training step"
        time.sleep(0.2)
    started = time.monotonic()
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and time.monotonic() - started < 10
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_a_queued_job_is_cancelled_at_once_and_pages_list_newest_first(
    client, intents_jsonl, tiny_model_dir
):
    uploaded = client.files.create(file=("a.jsonl", intents_jsonl), purpose="fine-tune")
    ids = []
    for _ in range(3):
        job = client.fine_tuning.jobs.create(
            model=tiny_model_dir.name,
            training_file=uploaded.id,
            metadata={"tunewright_overrides": LONG},
        )
        ids.append(job.id)
    for job_id in reversed(ids):  # the queued ones first, so the runner never starts them
        assert client.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == ids[::-1][:2] and first.has_more
    second = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]


def test_a_bad_file_is_refused_naming_file_and_line(client):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
        {"messages": [{"role": "user", "content": "no answer"}]},
    ]
    bad = chat_jsonl(rows) + b"{not json\n"
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("mine.jsonl", bad), purpose="fine-tune")
    error = refused.value.body
    assert error["code"] == "invalid_file" and error["param"] == "file"
    assert "mine.jsonl:2: " in error["message"] and "mine.jsonl:3: broken JSON" in error["message"]
    assert "2 of 3 rows" in error["message"]


@pytest.mark.parametrize(
    "change, param",
    [
        ({"model": "gpt-4o-mini"}, "model"),
        ({"training_file": "file-000000000000000000000000"}, "training_file"),
        ({"training_file": "../../etc/passwd"}, "training_file"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"warmup": 3}}}},
            "method.supervised.hyperparameters.warmup",
        ),
        ({"metadata": {"tunewright_overrides": "data.train_files=[/etc/passwd]"}}, "metadata"),
        ({"metadata": {"tunewright_overrides": "train.lr=-1"}}, "metadata"),
    ],
)
def test_bad_job_requests_are_refused_with_openai_errors(
    client, intents_jsonl, tiny_model_dir, change, param
):
    uploaded = client.files.create(file=("ok.jsonl", intents_jsonl), purpose="fine-tune")
    request = {"model": tiny_model_dir.name, "training_file": uploaded.id, **change}
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as refused:
        client.fine_tuning.jobs.create(**request)
    assert refused.value.body["param"] == param and refused.value.body["message"]
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before  # nothing written


def test_ids_are_never_paths(client, studio):
    for path in ("/v1/files/..%2F..%2Fstudio.db", "/v1/fine_tuning/jobs/..%2Fstudio.db/events"):
        answer = httpx.get(studio.url + path, headers={"Authorization": "Bearer studio-test-key"})
        assert answer.status_code == 404 and "error" in answer.json()


def test_a_wrong_key_is_refused_and_health_needs_none(studio):
    wrong = OpenAI(base_url=studio.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.fine_tuning.jobs.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert httpx.get(studio.url + "/health").status_code == 200


def test_deleting_a_file(client, intents_jsonl):
    uploaded = client.files.create(
        file=(
            "d.jsonl",
            chat_jsonl(
                [
                    {
                        "messages": [
                            {"role": "system", "content": SYSTEM},
                            {"role": "user", "content": "x"},
                            {"role": "assistant", "content": "y"},
                        ]
                    }
                ]
            ),
        ),
        purpose="fine-tune",
    )
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


@pytest.mark.slow
def test_a_failed_job_says_why_and_keeps_its_log(client, studio, intents_jsonl, tiny_model_dir):
    uploaded = client.files.create(file=("f.jsonl", intents_jsonl), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=uploaded.id,
        metadata={"tunewright_overrides": FAST + " data.max_seq_len=8"},  # every chat is too long
    )
    done = wait(client, job.id)
    assert done.status == "failed" and done.fine_tuned_model is None
    assert done.error.code == "training_failed" and "error:" in done.error.message
    assert "job.log" in done.error.message
    log = (studio.studio.runs_dir / job.id / "job.log").read_text()
    assert done.error.message.split(" (exit code")[0] in log
    events = client.fine_tuning.jobs.list_events(job.id).data
    assert events[0].level == "error" and events[0].message.startswith("The job failed: ")


def test_another_address_needs_an_api_key(tmp_path):
    with pytest.raises(TunewrightError, match="without an API key"):
        start_studio(StudioSettings(host="0.0.0.0", port=0, home=tmp_path, model="unused"))
    assert not (tmp_path / "studio.db").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "content, purpose, expected",
    [
        (b'{"messages": []}\n', "assistants", "purpose must be 'fine-tune'"),
        (
            b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
            "fine-tune",
            "u.jsonl:1: invalid UTF-8",
        ),
        (b"a,b\n1,2\n", "fine-tune", "u.jsonl:1: broken JSON"),
        ('{"messages": []}\n'.encode("utf-16"), "fine-tune", "u.jsonl:1: "),
        (b"\n\n", "fine-tune", "holds no examples"),
    ],
)
def test_unusable_uploads_are_refused_and_nothing_is_stored(
    client, studio, content, purpose, expected
):
    stored = set((studio.studio.files_dir).iterdir())
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("u.jsonl", content), purpose=purpose)
    assert expected in refused.value.body["message"]
    assert set(studio.studio.files_dir.iterdir()) == stored


def test_an_oversized_upload_is_a_413_and_nothing_is_stored(tmp_path, tiny_model_dir):
    small = start_studio(
        StudioSettings(
            port=0, home=tmp_path, model=str(tiny_model_dir), api_key=KEY, max_upload_bytes=1024
        )
    )
    try:
        row = b'{"messages": [{"role": "user", "content": "hi"}, '
        row += b'{"role": "assistant", "content": "hello"}]}\n'
        big = row * (1024 // len(row) + 1)
        headers = {"Authorization": f"Bearer {KEY}"}
        stored = set(small.studio.files_dir.iterdir())
        declared = httpx.post(  # the size is declared: refused before the body is read
            small.url + "/v1/files",
            files={"file": ("big.jsonl", big)},
            data={"purpose": "fine-tune"},
            headers=headers,
        )
        # a form just over the limit, whose file part is over it too (the declared length is
        # allowed some slack for the form's own fields)
        slack = httpx.post(
            small.url + "/v1/files",
            files={"file": ("big.jsonl", row * 30)},
            data={"purpose": "fine-tune"},
            headers=headers,
        )
        for refused in (declared, slack):
            assert refused.status_code == 413, refused.text
            error = refused.json()["error"]
            assert error["code"] == "file_too_large" and error["param"] == "file"
            assert "1024 bytes" in error["message"] and error["type"] == "invalid_request_error"
        listed = httpx.get(small.url + "/v1/files", headers=headers).json()
        assert listed["data"] == []
        assert set(small.studio.files_dir.iterdir()) == stored
    finally:
        small.stop()


def test_every_route_but_health_needs_the_key(studio):
    paths = httpx.get(studio.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    routes = [
        (method.upper(), path.replace("{file_id}", "file-x").replace("{job_id}", "ftjob-x"))
        for path, operations in paths.json()["paths"].items()
        for method in operations
    ]
    routes = [(m, p.replace("{model_id}", "m")) for m, p in routes]
    assert ("POST", "/v1/fine_tuning/jobs/ftjob-x/cancel") in routes
    assert ("GET", "/openapi.json") not in routes  # the schema itself is checked below
    for method, path in [*routes, ("GET", "/openapi.json"), ("GET", "/docs")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = httpx.request(method, studio.url + path, headers=headers)
            if path == "/health":
                assert answer.status_code == 200
            elif path.startswith("/v1/"):
                assert answer.status_code == 401, (method, path, answer.status_code)
                assert answer.json()["error"]["message"]
            elif answer.status_code == 303:  # a page: off to the sign-in form
                assert answer.headers["location"].startswith("/login?next="), path
            else:  # the key was sent, wrongly, as a header: refused outright
                assert answer.status_code == 401, (method, path, answer.status_code)
