"""The Export page: a finished job's tuned model as an adapter, a merged Hugging Face folder or
GGUF files, written by `export.export` (each artifact parity-checked against the tuned model and
published only if it passes), with the parity figures and a download link per file.

An export runs on a background thread, one at a time, and the page refreshes until it is done.
A download names an artifact (one of a fixed set) and a file listed in that artifact's folder
on disk; the client's path is looked up in that listing, never joined onto a folder.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, RedirectResponse
from rich.console import Console

from tunewright.errors import TunewrightError
from tunewright.export.gguf_file import QUANTS
from tunewright.export.publish import MANIFEST
from tunewright.export.runner import FORMATS, PARITY_FILE, export
from tunewright.runs import RunFolder
from tunewright.serve.app import ApiError
from tunewright.studio.cli_runs import CliRun, find_run, run_view
from tunewright.studio.pages.render import render
from tunewright.studio.state import Studio
from tunewright.studio.store import JobRecord

ARTIFACTS = ("adapter", "merged", *(f"gguf-{q}" for q in QUANTS))


@dataclass
class _Exports:
    """The export running now (at most one) and each job's last failure."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[str, list[str]] = field(default_factory=dict)  # job id -> artifacts asked for
    errors: dict[str, str] = field(default_factory=dict)

    def start(self, run_dir: Path, job_id: str, formats: list[str], quants: list[str]) -> bool:
        """Start exporting on a thread; False when an export is already running."""
        with self.lock:
            if self.running:
                return False
            self.running[job_id] = [*formats, *(f"gguf-{q}" for q in quants)]
            self.errors.pop(job_id, None)
        threading.Thread(
            target=self._run,
            args=(run_dir, job_id, formats, quants),
            name=f"tunewright-export-{job_id}",
            daemon=True,
        ).start()
        return True

    def _run(self, run_dir: Path, job_id: str, formats: list[str], quants: list[str]) -> None:
        try:
            export(
                run_dir, formats, quants=quants or ("q8_0",), console=Console(file=io.StringIO())
            )
        except TunewrightError as e:
            self.errors[job_id] = str(e)
        except Exception as e:  # the page says what went wrong rather than spinning forever
            self.errors[job_id] = f"{type(e).__name__}: {e}"
        finally:
            with self.lock:
                self.running.pop(job_id, None)


def artifact_files(run_dir: Path, artifact: str) -> dict[str, Path]:
    """The files of a published artifact (its folder has a manifest), by relative path."""
    if artifact not in ARTIFACTS:
        return {}
    folder = RunFolder(run_dir).export_dir / artifact
    if not (folder / MANIFEST).is_file():
        return {}
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def artifacts(run_dir: Path) -> list[dict]:
    """Each artifact that was published or tried: its parity figures and its files."""
    parity_path = RunFolder(run_dir).export_dir / PARITY_FILE
    try:
        parity = json.loads(parity_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        parity = {}
    shown = []
    for name in ARTIFACTS:
        files = artifact_files(run_dir, name)
        if not files and name not in parity:
            continue
        shown.append(
            {
                "name": name,
                "published": bool(files),
                "parity": parity.get(name),
                "files": [(rel, path.stat().st_size) for rel, path in files.items()],
            }
        )
    return shown


def trained(run: JobRecord | CliRun) -> bool:
    """A succeeded job, or a CLI run with its adapter or model saved."""
    return run.finished if isinstance(run, CliRun) else run.status == "succeeded"


def add_routes(app: FastAPI, studio: Studio) -> None:
    exports = _Exports()

    @app.get("/export/{job_id}", include_in_schema=False)
    async def export_page(request: Request, job_id: str):
        """A job's exports, or a CLI run's (by its folder name)."""
        job, run_dir = find_run(studio, job_id)
        view = await asyncio.to_thread(run_view, studio, job)
        return render(
            request,
            "export.html",
            job=job,
            **view,
            artifacts=artifacts(run_dir) if view["finished"] else [],
            running=exports.running.get(job.id),
            busy=bool(exports.running),
            error=exports.errors.get(job.id),
            formats=FORMATS,
            quants=QUANTS,
        )

    @app.post("/export/{job_id}", include_in_schema=False)
    async def start_export(
        job_id: str, formats: list[str] = Form(default=[]), quant: str = Form("q8_0")
    ):
        job, run_dir = find_run(studio, job_id)
        chosen = [f for f in FORMATS if f in formats]
        refused = None  # shown on the page it redirects to
        if not trained(job):
            refused = f"the run is not trained ({job.status}): there is nothing to export"
        elif not chosen or quant not in QUANTS:
            refused = f"choose at least one of {', '.join(FORMATS)} (GGUF: {', '.join(QUANTS)})"
        elif not exports.start(run_dir, job.id, chosen, [quant] if "gguf" in chosen else []):
            refused = "another export is running: try again when it is done"
        if refused:
            exports.errors[job.id] = refused
        return RedirectResponse(f"/export/{quote(job.id, safe='')}", status_code=303)

    @app.get("/export/{job_id}/files/{artifact}/{name:path}", include_in_schema=False)
    async def download(job_id: str, artifact: str, name: str):
        _, run_dir = find_run(studio, job_id)
        path = artifact_files(run_dir, artifact).get(name)
        if path is None:
            raise ApiError(404, f"no file '{name}' in the {artifact} export", code="not_found")
        return FileResponse(path, filename=path.name)
