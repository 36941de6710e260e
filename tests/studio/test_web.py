"""The web app without a browser: the key rules for pages (sign-in cookie, redirect, the API's
JSON 401 unchanged), cross-site form posts refused, downloads limited to a published export's own
files, the Data page naming quarantined rows by upload name and line, the New job form built from
the config schema, jobs starting from a shipped recipe, and the Cancel button."""

from __future__ import annotations

import csv
import hashlib
import json
import shlex
from pathlib import Path

import httpx
import openai
import pytest

from tests.studio.conftest import FAST, KEY, chat_jsonl
from tunewright.config import load_config
from tunewright.errors import ConfigError
from tunewright.studio.pages import local_path
from tunewright.studio.pages.auth import COOKIE
from tunewright.studio.pages.new_job import (
    MAIN_SETTINGS,
    overrides_from,
    schema_field,
    settings_of,
)
from tunewright.studio.pages.recipe_data import recipe_files
from tunewright.studio.protocol import RECIPE_KEY, JobCreate
from tunewright.studio.recipe import chosen_recipe, job_config, shipped_recipes
from tunewright.studio.settings import StudioSettings
from tunewright.studio.store import JobRecord, new_id, now

AUTH = {"Authorization": f"Bearer {KEY}"}


# --- the key -----------------------------------------------------------------------------------
def test_pages_ask_to_sign_in_and_the_api_still_answers_401(studio):
    page = httpx.get(f"{studio.url}/jobs?limit=5", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/jobs%3Flimit%3D5"
    api = httpx.get(f"{studio.url}/v1/fine_tuning/jobs")
    assert api.status_code == 401 and api.json()["error"]["code"] == "invalid_api_key"
    for path in ("/login", "/static/studio.css", "/static/studio.js", "/health"):
        assert httpx.get(studio.url + path).status_code == 200, path


def test_the_sign_in_cookie_opens_pages_and_the_api(studio):
    signed = httpx.post(
        f"{studio.url}/login", data={"key": KEY, "next": "/data"}, follow_redirects=False
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/data"
    set_cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    with httpx.Client(base_url=studio.url, cookies={COOKIE: signed.cookies[COOKIE]}) as client:
        assert client.get("/data").status_code == 200
        assert client.get("/v1/fine_tuning/jobs").json()["object"] == "list"
    with httpx.Client(base_url=studio.url, cookies={COOKIE: "not-the-key"}) as client:
        assert client.get("/data").status_code == 303
        assert client.get("/v1/fine_tuning/jobs").status_code == 401
    wrong = httpx.post(f"{studio.url}/login", data={"key": "not-the-key", "next": "/data"})
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies


@pytest.mark.parametrize(
    "target", ["https://evil.example/x", "//evil.example/x", "/\\evil.example", "jobs", ""]
)
def test_signing_in_only_leads_to_this_server(target):
    assert local_path(target) == "/jobs"


def test_signing_in_leads_back_to_the_page_asked_for():
    assert local_path("/jobs/ftjob-1?a=b") == "/jobs/ftjob-1?a=b"


def test_cross_site_form_posts_are_refused(studio):
    cancel = f"{studio.url}/jobs/ftjob-{'0' * 24}/cancel"
    refused = httpx.post(cancel, headers={**AUTH, "Origin": "http://evil.example"})
    assert refused.status_code == 403
    same_site = httpx.post(cancel, headers={**AUTH, "Origin": studio.url})
    assert same_site.status_code == 404  # past the guard: there is no such job


# --- downloads ---------------------------------------------------------------------------------
def _job_with_an_export(studio) -> JobRecord:
    """A succeeded job whose run folder holds a published adapter export and an unpublished
    merged one, written by hand: this checks what may be downloaded, not the export."""
    job = JobRecord(new_id("ftjob"), now(), "succeeded", "m", f"file-{'0' * 24}", None, None, 0, {})
    studio.studio.store.add_job(job)
    run = studio.studio.runs_dir / job.id
    (run / "export" / "adapter" / "sub").mkdir(parents=True)
    (run / "export" / "adapter" / "export.json").write_text("{}")  # the manifest: published
    (run / "export" / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    (run / "export" / "adapter" / "sub" / "deep.txt").write_text("deep")
    (run / "export" / "merged").mkdir()
    (run / "export" / "merged" / "config.json").write_text("{}")  # no manifest: not published
    (run / "config.yaml").write_text("name: secret\n")
    return job


def test_downloads_name_only_files_of_a_published_export(studio):
    job = _job_with_an_export(studio)
    files = f"{studio.url}/export/{job.id}/files"
    got = httpx.get(f"{files}/adapter/adapter_config.json", headers=AUTH)
    assert got.status_code == 200 and got.content == b'{"r": 8}'
    assert httpx.get(f"{files}/adapter/sub/deep.txt", headers=AUTH).content == b"deep"
    for path in (
        "adapter/..%2Fconfig.yaml",
        "adapter/%2e%2e/%2e%2e/config.yaml",
        "adapter/%2Fetc%2Fpasswd",
        "merged/config.json",
        "..%2Fconfig.yaml/x",
        "gguf-q8_0/model.gguf",
    ):
        assert httpx.get(f"{files}/{path}", headers=AUTH).status_code == 404, path
    page = httpx.get(f"{studio.url}/export/{job.id}", headers=AUTH).text
    assert f"/export/{job.id}/files/adapter/sub/deep.txt" in page
    assert "merged/config.json" not in page


# --- data --------------------------------------------------------------------------------------
def test_the_data_page_names_quarantined_rows_by_upload_name_and_line(studio, intents_jsonl):
    rows = intents_jsonl.splitlines(keepends=True)
    too_long = chat_jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": "word " * 3000},
                    {"role": "assistant", "content": "long"},
                ]
            }
        ]
    )
    with_email = chat_jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": "write to jane.doe@example.com about my card"},
                    {"role": "assistant", "content": "card_arrival"},
                ]
            }
        ]
    )
    content = b"".join(rows[:2]) + too_long + b"".join(rows[2:]) + with_email
    uploaded = httpx.post(
        f"{studio.url}/v1/files",
        headers=AUTH,
        files={"file": ("long.jsonl", content)},
        data={"purpose": "fine-tune"},
    )
    assert uploaded.status_code == 200, uploaded.text
    page = httpx.get(f"{studio.url}/data/{uploaded.json()['id']}", headers=AUTH, timeout=120)
    assert page.status_code == 200
    assert 'id="quarantined">1<' in page.text
    assert "long.jsonl:3" in page.text  # the upload's name, not the stored file's hash
    assert "EMAIL 1<" in page.text  # found by the data stage's PII detector, though not redacted
    assert hashlib.sha256(content).hexdigest() not in page.text


# --- new job -----------------------------------------------------------------------------------
def test_the_new_job_form_documents_settings_from_the_config_schema():
    shown = settings_of(load_config(None, []))
    assert [s.key for s in shown] == list(MAIN_SETTINGS)
    for setting in shown:
        assert setting.doc and setting.doc == schema_field(setting.key).description
    kinds = {s.key: s.kind for s in shown}
    assert kinds["train.method"] == "choice" and kinds["evaluate.general_check"] == "bool"
    assert kinds["train.lr"] == "number" and kinds["data.system_prompt"] == "text"
    assert next(s for s in shown if s.key == "train.method").choices == ("lora", "full")


def test_the_form_sends_only_the_changed_settings_as_overrides():
    cfg = load_config(None, [])
    form = {s.key: s.value for s in settings_of(cfg)}
    assert overrides_from(form, cfg, "") == ""
    form |= {"train.lr": "0.001", "data.system_prompt": "Name the intent.", "train.max_steps": ""}
    line = overrides_from(form, cfg, " train.lora_alpha=8 ")
    assert line == "train.lr=0.001 'data.system_prompt=Name the intent.' train.lora_alpha=8"
    changed = load_config(None, shlex.split(line))
    assert changed.train.lr == 0.001 and changed.data.system_prompt == "Name the intent."
    assert changed.train.max_steps is None and changed.train.lora_alpha == 8


def test_a_job_starts_from_a_shipped_recipe_with_the_uploaded_data(tmp_path):
    folder = StudioSettings().recipes_dir
    recipes = shipped_recipes(folder)
    assert "customer-support" in recipes
    request = JobCreate(
        model="m", training_file=f"file-{'0' * 24}", metadata={RECIPE_KEY: "customer-support"}
    )
    training = tmp_path / "train.jsonl"
    cfg = job_config(
        request,
        job_id="ftjob-x",
        seed=1,
        model_source="base-model",
        training_path=training,
        validation_path=None,
        runs_dir=tmp_path,
        recipe=chosen_recipe(request.metadata, folder),
    )
    shipped = load_config(recipes["customer-support"], [])
    assert cfg.train.lora_layers == shipped.train.lora_layers
    assert cfg.data.system_prompt == shipped.data.system_prompt
    assert [Path(p) for p in cfg.data.train_files] == [training]
    assert cfg.data.format == "messages" and cfg.data.columns == {}
    assert cfg.model.name == "base-model" and cfg.run_dir == tmp_path / "ftjob-x"


@pytest.mark.parametrize("name", ["nope", "../pyproject", "/etc/passwd"])
def test_a_recipe_is_named_never_a_path(name):
    with pytest.raises(ConfigError, match="no shipped recipe"):
        chosen_recipe({RECIPE_KEY: name}, StudioSettings().recipes_dir)


def test_the_api_refuses_an_unknown_recipe(client, intents_jsonl):
    uploaded = client.files.create(file=("intents.jsonl", intents_jsonl), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="no shipped recipe 'nope'"):
        client.fine_tuning.jobs.create(
            model=client.models.list().data[0].id,
            training_file=uploaded.id,
            metadata={RECIPE_KEY: "nope"},
        )


def test_the_cancel_button_stops_a_job(client, studio, intents_jsonl):
    uploaded = client.files.create(file=("intents.jsonl", intents_jsonl), purpose="fine-tune")
    endless = FAST.replace("train.max_steps=4", "train.max_steps=100000") + " train.epochs=10000"
    job = client.fine_tuning.jobs.create(
        model=client.models.list().data[0].id,
        training_file=uploaded.id,
        metadata={"tunewright_overrides": endless},
    )
    pressed = httpx.post(
        f"{studio.url}/jobs/{job.id}/cancel",
        headers={**AUTH, "Origin": studio.url},
        follow_redirects=False,
        timeout=30,
    )
    assert pressed.status_code == 303 and pressed.headers["location"] == f"/jobs/{job.id}"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    page = httpx.get(f"{studio.url}/jobs/{job.id}", headers=AUTH).text
    assert 'data-status="cancelled"' in page and 'id="cancel"' not in page


def test_a_recipe_runs_on_its_own_data_through_uploaded_files(studio):
    training, test = recipe_files(studio.studio, "customer-support")
    recipes = StudioSettings().recipes_dir
    with (recipes / "data" / "banking77" / "train.csv").open() as f:
        assert training.rows == sum(1 for _ in csv.DictReader(f))
    assert training.filename == "customer-support-train.jsonl"
    assert test is not None and test.filename == "customer-support-test.jsonl"
    stored = studio.studio.files_dir / f"{training.sha256}.jsonl"
    first = json.loads(stored.read_text().splitlines()[0])["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]  # a text+label row, as a chat
    again, _ = recipe_files(studio.studio, "customer-support")
    assert again.id == training.id  # the same data is not added twice
