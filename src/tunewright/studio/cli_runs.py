"""Runs made with the CLI in the studio's runs folder: `tunewright run recipe.yaml
output_dir=<home>/runs` leaves an ordinary run folder there that no job made. The studio lists
them beside its jobs, read-only, with their state read from the folder, and opens their report
and export pages as for a job's run; a trained LoRA run is served for Compare as `run:<name>`
once its page, its report or Compare is opened.

A client names a run by its folder name; the name is looked up in a listing of the runs folder,
never joined onto it, so no name reaches outside that folder.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tunewright.errors import TunewrightError
from tunewright.runs import RunFolder, adapter_base_model, read_run_config
from tunewright.serve.app import ApiError
from tunewright.serve.registry import add_adapter
from tunewright.studio.state import Studio
from tunewright.studio.store import JOB_ID, JobRecord

log = logging.getLogger(__name__)

SERVED_PREFIX = "run:"  # a CLI run's trained adapter is served as run:<folder name>
_serving = threading.Lock()  # two pages opening one run must not load its adapter twice


@dataclass(frozen=True)
class CliRun:
    """One run folder no job made, as the pages show it."""

    name: str
    path: Path
    status: str  # evaluated (report written), trained (adapter or model saved) or started
    created_at: int  # when its config.yaml was written
    model: str | None  # the base model its recipe names
    method: str | None  # lora or full, once trained
    training: dict | None  # training.json: steps, losses, tokens/s

    @property
    def id(self) -> str:
        """The name the pages show where a job shows its id."""
        return self.name

    @property
    def ref(self) -> str:
        """The name as one URL path segment."""
        return quote(self.name, safe="")

    @property
    def page(self) -> str:
        return f"/runs/{self.ref}"

    @property
    def finished(self) -> bool:
        """Trained: there is a model to report on, export and compare."""
        return self.status in ("trained", "evaluated")


def _is_job_folder(studio: Studio, name: str) -> bool:
    return bool(JOB_ID.fullmatch(name)) and studio.store.job(name) is not None


def read_cli_run(path: Path) -> CliRun:
    """What a run folder holds, from its files (nothing is loaded)."""
    folder = RunFolder(path)
    try:
        trained = folder.trained()
    except TunewrightError:
        trained = None
    status = "evaluated" if folder.report_html.is_file() else "trained" if trained else "started"
    stamp = folder.config_file if folder.config_file.is_file() else path
    try:
        model = read_run_config(path).model.name
    except (TunewrightError, OSError, ValueError):
        model = None
    try:
        training = json.loads(folder.training_summary_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        training = None
    return CliRun(
        name=path.name,
        path=path,
        status=status,
        created_at=int(stamp.stat().st_mtime),
        model=model,
        method=trained.method if trained else None,
        training=training if isinstance(training, dict) else None,
    )


def cli_runs(studio: Studio) -> list[CliRun]:
    """The run folders under the runs folder that no job made, newest first."""
    if not studio.runs_dir.is_dir():
        return []
    found = [
        read_cli_run(entry)
        for entry in studio.runs_dir.iterdir()
        if RunFolder(entry).is_run() and not _is_job_folder(studio, entry.name)
    ]
    return sorted(found, key=lambda r: (-r.created_at, r.name))


def find_cli_run(studio: Studio, name: str) -> CliRun | None:
    """The CLI run whose folder is named `name`, found by listing the runs folder, or None."""
    if not studio.runs_dir.is_dir():
        return None
    for entry in studio.runs_dir.iterdir():
        if entry.name == name and RunFolder(entry).is_run():
            return None if _is_job_folder(studio, name) else read_cli_run(entry)
    return None


def find_run(studio: Studio, ref: str) -> tuple[JobRecord | CliRun, Path]:
    """A job (by its id) or else a CLI run (by its folder name), and its run folder; or a 404."""
    job = studio.store.job(ref) if JOB_ID.fullmatch(ref) else None
    if job is not None:
        return job, studio.runs_dir / job.id
    run = find_cli_run(studio, ref)
    if run is None:
        raise ApiError(404, f"no such job or run: {ref!r}", code="not_found")
    return run, run.path


def served_name(studio: Studio, run: CliRun) -> str | None:
    """Serve a trained LoRA run's adapter (once) and return its model name; None for a run
    that cannot be served beside this studio's base model (untrained, full, another base)."""
    name = SERVED_PREFIX + run.name
    if name in studio.models.served:
        return name
    if run.method != "lora":
        return None
    with _serving:
        if name in studio.models.served:
            return name
        try:
            folder = RunFolder(run.path).trained().folder
            adapter_base_model(folder)  # an unreadable adapter config fails here, not mid-load
            system_prompt = read_run_config(run.path).data.system_prompt
            add_adapter(studio.models, studio.engine, name, folder, system_prompt)
        except (TunewrightError, OSError, ValueError) as e:
            log.info("run %s is not served: %s", run.name, e)
            return None
    return name


def serve_cli_runs(studio: Studio) -> None:
    """Serve every trained CLI run that can be served and is not yet (for Compare)."""
    for run in cli_runs(studio):
        if run.finished:
            served_name(studio, run)


def run_view(studio: Studio, run: JobRecord | CliRun) -> dict:
    """What the report and export pages need of a job or a CLI run alike: `ref` (its URL
    segment), `page` (its own page), `finished` (it has a trained model) and `model` (the
    served name to compare, if any)."""
    if isinstance(run, CliRun):
        return {
            "ref": run.ref,
            "page": run.page,
            "finished": run.finished,
            "model": served_name(studio, run) if run.finished else None,
        }
    return {
        "ref": run.id,
        "page": f"/jobs/{run.id}",
        "finished": run.status == "succeeded",
        "model": run.fine_tuned_model,
    }
