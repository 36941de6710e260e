"""The New job page: pick a starting recipe (a shipped one or the defaults) and the data (an
uploaded file, or the recipe's own data: recipe_data.py), adjust the main settings, each shown
with its one-line doc from the config schema, ask for a dry-run estimate, start.

The form becomes the same `JobCreate` a client posts to `/v1/fine_tuning/jobs`: the recipe is
named in `metadata["tunewright_recipe"]`, the settings changed from the recipe's values are
dotted overrides in `metadata["tunewright_overrides"]`, and `add_job` creates the job.
"""

from __future__ import annotations

import asyncio
import io
import shlex
import shutil
import threading
import types
import typing
import uuid
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ValidationError
from rich.console import Console

from tunewright.config import RunConfig, load_config
from tunewright.errors import TunewrightError
from tunewright.serve.app import ApiError
from tunewright.studio.app import add_job, job_run_config
from tunewright.studio.pages.recipe_data import RECIPE_DATA, recipe_files
from tunewright.studio.pages.render import render
from tunewright.studio.protocol import OVERRIDES_KEY, RECIPE_KEY, JobCreate
from tunewright.studio.recipe import chosen_recipe, shipped_recipes
from tunewright.studio.state import Studio

# The settings the page shows, as dotted recipe keys; their docs and types come from RunConfig.
MAIN_SETTINGS = (
    "train.method",
    "train.epochs",
    "train.max_steps",
    "train.max_minutes",
    "train.batch_size",
    "train.lr",
    "train.lora_r",
    "data.max_seq_len",
    "data.system_prompt",
    "evaluate.general_check",
)
ESTIMATE_STEPS = 2  # timed optimiser steps of the dry run (after its warm-up step)
_estimating = threading.Lock()  # one dry run at a time: it trains in this process


@dataclass
class Setting:
    key: str  # dotted, as an override names it
    doc: str  # the field's description in the config schema
    kind: Literal["choice", "bool", "number", "text"]
    choices: tuple[str, ...]
    value: str  # as the form shows it


def schema_field(key: str):
    """The pydantic FieldInfo of a dotted key of RunConfig."""
    model: type[BaseModel] = RunConfig
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name]


def form_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_of(cfg: RunConfig) -> list[Setting]:
    """The main settings with `cfg`'s values, their docs and form kinds from the schema."""
    shown = []
    for key in MAIN_SETTINGS:
        info = schema_field(key)
        annotation = info.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is Literal:
            kind, choices = "choice", tuple(typing.get_args(annotation))
        elif annotation is bool:
            kind, choices = "bool", ("true", "false")
        elif annotation in (int, float) or (
            isinstance(annotation, types.UnionType) and args and args[0] in (int, float)
        ):
            kind, choices = "number", ()
        else:
            kind, choices = "text", ()
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        shown.append(Setting(key, info.description or "", kind, choices, form_value(value)))
    return shown


def overrides_from(form: dict, recipe_cfg: RunConfig, extra: str) -> str:
    """The dotted overrides of the settings the form changed from the recipe, then `extra`."""
    changed = []
    for setting in settings_of(recipe_cfg):
        given = str(form.get(setting.key, setting.value)).strip()
        if given != setting.value:
            changed.append(shlex.quote(f"{setting.key}={given if given else 'null'}"))
    return " ".join([*changed, extra.strip()]).strip()


def add_routes(app: FastAPI, studio: Studio) -> None:
    recipes_dir = studio.settings.recipes_dir

    def recipe_config(name: str) -> RunConfig:
        return load_config(chosen_recipe({RECIPE_KEY: name} if name else {}, recipes_dir), [])

    def page(request: Request, form: dict, *, status=200, error=None, estimate=None):
        name = form.get("recipe", "")
        try:
            cfg = recipe_config(name)
        except TunewrightError as e:
            cfg, error, name = load_config(None, []), str(e), ""
        shown = settings_of(cfg)
        for setting in shown:  # keep what the user typed
            if setting.key in form:
                setting.value = str(form[setting.key])
        return render(
            request,
            "new_job.html",
            status=status,
            files=studio.store.files(),
            recipes=list(shipped_recipes(recipes_dir)),
            form=form,
            recipe=name,
            settings=shown,
            models=studio.base_names(),
            error=error,
            estimate=estimate,
            recipe_data=RECIPE_DATA,
        )

    @app.get("/new", include_in_schema=False)
    async def new_page(request: Request, file: str = "", recipe: str = ""):
        return page(request, {"training_file": file, "recipe": recipe})

    @app.post("/new", include_in_schema=False)
    async def submit(request: Request):
        form = {k: v for k, v in (await request.form(max_fields=64, max_files=0)).items()}
        try:
            files = await asyncio.to_thread(_data_files, studio, form)
            req = _request({**form, **files}, recipe_config(form.get("recipe", "")), studio)
            if form.get("action") == "estimate":
                estimate = await asyncio.to_thread(dry_run, studio, req)
                return page(request, form, estimate=estimate)
            job = add_job(studio, req)
        except ApiError as e:
            return page(request, form, status=400, error=e.body["error"]["message"])
        except TunewrightError as e:
            return page(request, form, status=400, error=str(e))
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def _request(form: dict, recipe_cfg: RunConfig, studio: Studio) -> JobCreate:
    metadata = {}
    if form.get("recipe"):
        metadata[RECIPE_KEY] = form["recipe"]
    overrides = overrides_from(form, recipe_cfg, form.get("overrides", ""))
    if overrides:
        metadata[OVERRIDES_KEY] = overrides
    body = {
        "model": form.get("model") or studio.base_names()[0],
        "training_file": form.get("training_file", ""),
        "validation_file": form.get("validation_file") or None,
        "suffix": form.get("suffix") or None,
        "seed": int(form["seed"]) if str(form.get("seed", "")).strip().isdigit() else None,
        "metadata": metadata or None,
    }
    try:
        return JobCreate.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}") from None


def dry_run(studio: Studio, req: JobCreate) -> dict:
    """`tunewright train --dry-run` on the job's config, in a scratch run folder: time a few
    steps; returns tokens/s, peak memory, planned steps and the estimated training time."""
    from tunewright.pipeline import load_or_prepare
    from tunewright.train.loop import train

    scratch = studio.settings.home_dir / "estimates"
    cfg = job_run_config(studio, req, job_id=f"estimate-{uuid.uuid4().hex[:12]}", runs_dir=scratch)
    quiet = Console(file=io.StringIO())
    with _estimating:
        try:
            dataset = load_or_prepare(cfg, console=quiet)
            train_examples = dataset.summary["splits"]["train"]
            result = train(cfg, dataset, console=quiet, dry_run_steps=ESTIMATE_STEPS)
        finally:
            shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a scratch folder, not a run
    return {
        "tokens_per_second": result.tokens_per_second,
        "peak_memory_mb": result.peak_memory_mb,
        "planned_steps": result.planned_steps,
        "eta_seconds": result.eta_seconds,
        "precision": result.precision,
        "train_examples": train_examples,
    }


def _data_files(studio: Studio, form: dict) -> dict:
    """The form's file choices as file ids: "the recipe's own data" becomes the recipe's train
    (and test, unless a test file was picked) data, added as files."""
    if form.get("training_file") != RECIPE_DATA:
        return {}
    if not form.get("recipe"):
        raise ApiError(400, "choose the recipe whose data to train on")
    training, test = recipe_files(studio, form["recipe"])
    chosen_test = form.get("validation_file") or (test.id if test else "")
    return {"training_file": training.id, "validation_file": chosen_test}
