"""A run made with the CLI in the studio's runs folder shows up in the studio: listed on the Jobs
page as a CLI run, with its own read-only page, report, export page and a served model for
Compare; a name that is not a listed run folder is a 404."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest
import yaml
from rich.console import Console

from tests.studio.conftest import FAST, KEY
from tunewright.config import load_config
from tunewright.pipeline import run

FIXTURES = Path(__file__).parents[1] / "fixtures"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAME = "cli tiny+1"  # a space and a plus: the pages must quote it in their links


@pytest.fixture(scope="module")
def cli_run(studio, tiny_model_dir, tmp_path_factory) -> Path:
    """`tunewright run recipe.yaml output_dir=<studio home>/runs`, in-process on the tiny model;
    and beside it a run folder that was started but never trained."""
    recipe = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": NAME,
                "model": {"name": str(tiny_model_dir)},
                "data": {
                    "train_files": [str(FIXTURES / "intents_train.csv")],
                    "test_files": [str(FIXTURES / "intents_test.csv")],
                    "columns": {"label": "category"},
                    "system_prompt": "Name the intent.",
                    "val_fraction": 0.1,
                },
            }
        )
    )
    runs = studio.studio.runs_dir
    cfg = load_config(recipe, [*FAST.split(), f"output_dir={runs}"])
    run(cfg, console=Console(quiet=True))
    started = runs / "half-done"
    started.mkdir()
    shutil.copy(cfg.run_dir / "config.yaml", started / "config.yaml")
    (runs / "not-a-run").mkdir()  # no config.yaml, adapter/ or model/: not listed
    return cfg.run_dir


def get(studio, path: str) -> httpx.Response:
    return httpx.get(studio.url + path, headers=AUTH, timeout=60)


def test_the_jobs_page_lists_cli_runs_with_their_state(studio, cli_run):
    page = get(studio, "/jobs")
    assert page.status_code == 200
    rows = dict(re.findall(r'<tr data-run="([^"]*)">(.*?)</tr>', page.text, re.S))
    assert set(rows) == {NAME, "half-done"}
    done = rows[NAME]
    assert 'data-status="evaluated"' in done and ">CLI<" in done
    training = json.loads((cli_run / "training.json").read_text())
    assert f"step {training['steps']} / {training['planned_steps']}" in done
    assert f"{training['final_train_loss']:.3f}" in done
    assert 'href="/report/cli%20tiny%2B1"' in done and 'href="/export/cli%20tiny%2B1"' in done
    assert f"run:{NAME}" in get(studio, "/compare").text  # served for Compare
    assert 'data-status="started"' in rows["half-done"]
    assert "/report/" not in rows["half-done"]  # nothing to report or export yet


def test_a_cli_runs_pages_work_as_a_jobs(studio, cli_run):
    page = get(studio, "/runs/cli%20tiny%2B1")
    assert page.status_code == 200
    assert f"run:{NAME}" in page.text  # its adapter is served, for Compare
    assert "Cancel" not in page.text  # read-only

    report = get(studio, "/report/cli%20tiny%2B1")
    assert report.status_code == 200
    assert 'id="verdict"' in report.text
    file = get(studio, "/report/cli%20tiny%2B1/report.html")
    assert file.status_code == 200
    assert file.text == (cli_run / "report.html").read_text(encoding="utf-8")

    export = get(studio, "/export/cli%20tiny%2B1")
    assert export.status_code == 200 and 'id="export-form"' in export.text
    assert 'action="/export/cli%20tiny%2B1"' in export.text

    assert get(studio, "/runs/half-done").status_code == 200
    assert 'id="export-form"' not in get(studio, "/export/half-done").text


def test_a_served_cli_run_answers(studio, cli_run, client):
    get(studio, "/runs/cli%20tiny%2B1")  # serves it, if the test before did not
    answer = client.chat.completions.create(
        model=f"run:{NAME}", messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )
    assert answer.choices[0].message.content is not None
    assert f"run:{NAME}" in [m.id for m in client.models.list()]


@pytest.mark.parametrize(
    "path",
    [
        "/runs/..%2Fx",
        "/runs/not-a-run",
        "/runs/unknown",
        "/report/..%2Fruns",
        "/report/unknown",
        "/report/..%2F..%2Fstudio.db/report.html",
        "/export/unknown",
        "/export/..%2Fx/files/adapter/adapter_config.json",
    ],
)
def test_unknown_or_outside_names_are_404(studio, cli_run, path):
    assert get(studio, path).status_code == 404
