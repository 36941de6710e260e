"""The Jobs pages: the queue with status, progress and ETA; one job with its live loss curve
(server-sent events read from the run's `metrics.jsonl`), tokens/s, events, log tail and cancel.
Runs made with the CLI in the studio's runs folder are listed below the jobs, and each has a
read-only page (`/runs/{name}`; cli_runs.py).

Progress comes from the same rows the runner turns into API events, read here straight from the
run folder, so a page and `GET /v1/fine_tuning/jobs/{id}/events` never disagree.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, StreamingResponse

from tunewright.serve.app import ApiError
from tunewright.studio.app import cancel_job, find_job
from tunewright.studio.cli_runs import CliRun, cli_runs, find_cli_run, run_view
from tunewright.studio.pages.render import render, when
from tunewright.studio.runner import LOG_FILE
from tunewright.studio.state import Studio
from tunewright.studio.store import ACTIVE, JobRecord, now

LOG_TAIL_BYTES = 16384  # of job.log shown on the job page
STREAM_POLL_S = 0.5  # how often the event stream looks for new metrics rows
JOBS_SHOWN = 100
EVENTS_SHOWN = 30  # newest job events on the job page


def read_metrics(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete rows of a metrics.jsonl from byte `offset`, and the offset after them."""
    if not path.is_file():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    rows, used = _parse_rows(chunk)
    return rows, offset + used


def _parse_rows(chunk: bytes) -> tuple[list[dict], int]:
    """The JSON rows of the complete lines in `chunk`, and how many bytes those lines take."""
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a row still being written waits for its newline
    rows = []
    for line in complete.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows, len(complete)


def last_rows(path: Path, size: int = 8192) -> list[dict]:
    """The metrics rows in the last `size` bytes of a metrics.jsonl: enough for the newest
    training row, without reading a long run's whole file for each job listed."""
    if not path.is_file():
        return []
    start = max(0, path.stat().st_size - size)
    with path.open("rb") as f:
        f.seek(start)
        chunk = f.read()
    if start:
        chunk = chunk[chunk.find(b"\n") + 1 :]  # the first line is cut
    rows, _ = _parse_rows(chunk)
    return rows


def progress(job: JobRecord, rows: list[dict]) -> dict:
    """Step, planned steps, percent, last loss, tokens/s and seconds left, from metrics rows."""
    train = [r for r in rows if "train_loss" in r]
    last = train[-1] if train else {}
    total = last.get("planned_steps")
    step = last.get("step", 0)
    percent = 100.0 if job.status == "succeeded" else (100.0 * step / total if total else 0.0)
    eta = None
    if job.status == "running" and job.estimated_finish:
        eta = max(0, job.estimated_finish - now())
    return {
        "step": step,
        "total": total,
        "percent": round(min(percent, 100.0), 1),
        "loss": last.get("train_loss"),
        "tokens_per_second": last.get("tokens_per_second"),
        "eta_s": eta,
        "status": job.status,
    }


def run_progress(run: CliRun) -> dict:
    """A CLI run's step, loss and tokens/s: from training.json once trained, else from the
    newest metrics row (a run still training, or one stopped)."""
    if run.training:
        t = run.training
        steps = t.get("steps", 0)
        total = t.get("planned_steps") or steps
        return {
            "step": steps,
            "total": total,
            "percent": 100.0 if run.finished else round(100.0 * steps / total, 1) if total else 0,
            "loss": t.get("final_train_loss"),
            "val_loss": t.get("val_loss"),
            "tokens_per_second": t.get("tokens_per_second"),
            "seconds": t.get("seconds"),
        }
    train = [r for r in last_rows(run.path / "metrics.jsonl") if "train_loss" in r]
    last = train[-1] if train else {}
    total, step = last.get("planned_steps"), last.get("step", 0)
    return {
        "step": step,
        "total": total,
        "percent": round(min(100.0 * step / total, 100.0), 1) if total else 0.0,
        "loss": last.get("train_loss"),
        "val_loss": None,
        "tokens_per_second": last.get("tokens_per_second"),
        "seconds": None,
    }


def log_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        text = f.read().decode("utf-8", errors="replace")
    return text.replace("\r", "\n")


def add_routes(app: FastAPI, studio: Studio) -> None:
    @app.get("/jobs", include_in_schema=False)
    async def jobs_page(request: Request):
        jobs = studio.store.jobs(limit=JOBS_SHOWN)
        shown = [
            (job, progress(job, last_rows(studio.runs_dir / job.id / "metrics.jsonl")))
            for job in jobs
        ]
        files = {f.id: f for f in studio.store.files()}
        runs = (await asyncio.to_thread(cli_runs, studio))[:JOBS_SHOWN]
        return render(
            request,
            "jobs.html",
            jobs=shown,
            files=files,
            active=ACTIVE,
            runs=[(run, run_progress(run)) for run in runs],
        )

    @app.get("/runs/{name}", include_in_schema=False)
    async def run_page(request: Request, name: str):
        """A run made with the CLI: its state, training figures and log, read-only."""
        run = await asyncio.to_thread(find_cli_run, studio, name)
        if run is None:
            raise ApiError(
                404, f"no run named {name!r} in the studio's runs folder", code="not_found"
            )
        view = await asyncio.to_thread(run_view, studio, run)
        return render(
            request,
            "run.html",
            run=run,
            progress=run_progress(run),
            **view,
        )

    @app.get("/jobs/{job_id}", include_in_schema=False)
    async def job_page(request: Request, job_id: str):
        job = find_job(studio, job_id)
        run_dir = studio.runs_dir / job.id
        rows = last_rows(run_dir / "metrics.jsonl")
        return render(
            request,
            "job.html",
            job=job,
            progress=progress(job, rows),
            events=studio.store.events(job.id, limit=EVENTS_SHOWN),
            log=log_tail(run_dir / LOG_FILE),
            training_file=studio.store.file(job.training_file),
            active=ACTIVE,
        )

    @app.post("/jobs/{job_id}/cancel", include_in_schema=False)
    async def cancel(job_id: str):
        job = find_job(studio, job_id)
        try:
            await cancel_job(studio, job)
        except ApiError:
            pass  # it finished meanwhile: the page shows how
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @app.get("/jobs/{job_id}/stream", include_in_schema=False)
    async def stream(request: Request, job_id: str):
        """Server-sent events until the job has finished: `metrics` (new metrics.jsonl rows),
        `progress`, `events` (the newest job events, when there are new ones) and `log` (the
        log's tail, when it grew); then one `done`."""
        job = find_job(studio, job_id)
        return StreamingResponse(
            _follow(studio, job.id, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _follow(studio: Studio, job_id: str, request: Request):
    run_dir = studio.runs_dir / job_id
    offset, log_size, newest_event = 0, -1, None
    last_train: list[dict] = []  # the newest training row: progress needs it every time
    while True:
        job = studio.store.job(job_id)
        rows, offset = await asyncio.to_thread(read_metrics, run_dir / "metrics.jsonl", offset)
        if rows:
            yield _sse("metrics", rows)
            last_train = [r for r in rows if "train_loss" in r][-1:] or last_train
        yield _sse("progress", progress(job, last_train))
        events = studio.store.events(job_id, limit=EVENTS_SHOWN)
        if events and events[0]["id"] != newest_event:
            newest_event = events[0]["id"]
            yield _sse(
                "events", [{"when": when(e["created_at"]), "message": e["message"]} for e in events]
            )
        log_file = run_dir / LOG_FILE
        size = log_file.stat().st_size if log_file.is_file() else 0
        if size != log_size:
            log_size = size
            yield _sse("log", await asyncio.to_thread(log_tail, log_file))
        if job.status not in ACTIVE:
            yield _sse("done", {"status": job.status})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(STREAM_POLL_S)


def _sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(_finite(data))}\n\n"


def _finite(value):
    """Non-finite floats (a diverged loss) as null: JSON has no NaN, and the browser's parser
    would reject the whole event."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
