"""The fine-tuning jobs API (`/v1/files`, `/v1/fine_tuning/jobs`), added to `serve`'s app so one
server trains models and answers with them: `serve`'s API-key middleware, error shapes and
`/v1/chat/completions` apply unchanged.

Ids in paths are checked against their pattern before anything is looked up; nothing a client
sends becomes a path.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tunewright.config import RunConfig, save_config
from tunewright.errors import ConfigError
from tunewright.serve.app import ApiError
from tunewright.studio.protocol import JobCreate, file_object, job_object, page
from tunewright.studio.recipe import chosen_recipe, job_config, resolved_hyperparameters
from tunewright.studio.runner import TERM_GRACE_S
from tunewright.studio.state import Studio
from tunewright.studio.store import (
    ACTIVE,
    FILE_ID,
    FINISHED,
    JOB_ID,
    FileRecord,
    JobRecord,
    new_id,
    now,
)
from tunewright.studio.uploads import (
    CHAT,
    PAIRS,
    UploadRefused,
    check_chat_jsonl,
    content_path,
    store_content,
    stored_kind,
)

PURPOSE = "fine-tune"


def add_jobs_routes(app: FastAPI, studio: Studio) -> None:
    """Add the files and fine-tuning jobs routes to `app` (serve's app)."""
    settings = studio.settings

    # --- files ---------------------------------------------------------------------------
    @app.post("/v1/files")
    async def upload(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 65536:
            raise _too_large(settings.max_upload_bytes)
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # starlette's MultiPartException and friends
            raise ApiError(
                400, f"send multipart/form-data with 'file' and 'purpose': {e}"
            ) from None
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != PURPOSE:
            raise ApiError(400, f"purpose must be '{PURPOSE}' (got {purpose!r})", param="purpose")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "no file part named 'file'", param="file")
        content = await upload.read(settings.max_upload_bytes + 1)
        if len(content) > settings.max_upload_bytes:
            raise _too_large(settings.max_upload_bytes)
        record = await asyncio.to_thread(
            add_file, studio, content, upload.filename or "upload.jsonl"
        )
        return file_object(record)

    @app.get("/v1/files")
    async def list_files(purpose: str | None = None):
        return page([file_object(f) for f in studio.store.files(purpose)], False)

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str):
        return file_object(find_file(studio, file_id))

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str):
        record = find_file(studio, file_id)
        users = [
            j.id
            for j in studio.store.jobs_with_status(*ACTIVE)
            if record.id in (j.training_file, j.validation_file)
        ]
        if users:
            raise ApiError(
                409, f"{record.id} is used by unfinished jobs: {', '.join(users)}", param="file_id"
            )
        if studio.store.delete_file(record.id):
            content_path(studio.files_dir, record.sha256).unlink(missing_ok=True)
        return {"id": record.id, "object": "file", "deleted": True}

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str):
        record = find_file(studio, file_id)
        data = await asyncio.to_thread(content_path(studio.files_dir, record.sha256).read_bytes)
        return Response(data, media_type="application/octet-stream")

    # --- jobs ----------------------------------------------------------------------------
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request):
        body = await _json_body(request, settings.max_request_bytes)
        try:
            req = JobCreate.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"{where}: {first['msg']}", param=where) from None
        return job_object(add_job(studio, req))

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(after: str | None = None, limit: int = 20):
        limit = _limit(limit)
        jobs = studio.store.jobs(after=after, limit=limit + 1)
        return page([job_object(j) for j in jobs[:limit]], len(jobs) > limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str):
        return job_object(find_job(studio, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        return job_object(await cancel_job(studio, find_job(studio, job_id)))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, after: str | None = None, limit: int = 20):
        job, limit = find_job(studio, job_id), _limit(limit)
        events = studio.store.events(job.id, after=after, limit=limit + 1)
        return page(events[:limit], len(events) > limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def job_checkpoints(job_id: str, after: str | None = None, limit: int = 10):
        job, limit = find_job(studio, job_id), _limit(limit)
        found = studio.checkpoints(job)
        if after is not None:
            ids = [c["id"] for c in found]
            found = found[ids.index(after) + 1 :] if after in ids else []
        return page(found[:limit], len(found) > limit)


# --- the two writes, shared by the API routes and the web pages -----------------------------
def add_file(studio: Studio, content: bytes, filename: str) -> FileRecord:
    """Check an uploaded chat JSONL with the data stage, store it once, record it; raises ApiError
    (400, the first bad rows as file:line) for an unusable file, storing nothing."""
    try:
        checked = check_chat_jsonl(content, filename)
    except UploadRefused as e:
        raise ApiError(400, str(e), param="file", code="invalid_file") from None
    store_content(studio.files_dir, checked.sha256, content)
    record = FileRecord(
        new_id("file"), checked.sha256, len(content), filename[:255], PURPOSE, now(), checked.rows
    )
    studio.store.add_file(record)
    return record


def add_job(studio: Studio, req: JobCreate) -> JobRecord:
    """Validate a create request against this studio, write the run's config.yaml and queue the
    job; raises ApiError (400/404) naming the bad field."""
    job_id = new_id("ftjob")
    seed = req.seed if req.seed is not None else random.randrange(2**31)
    cfg = job_run_config(studio, req, job_id=job_id, runs_dir=studio.runs_dir, seed=seed)
    training = studio.store.file(req.training_file)
    validation = studio.store.file(req.validation_file) if req.validation_file else None
    wanted = PAIRS if req.method_type == "dpo" else CHAT
    for param, record in (("training_file", training), ("validation_file", validation)):
        if (
            record is not None
            and stored_kind(content_path(studio.files_dir, record.sha256)) != wanted
        ):
            raise ApiError(
                400,
                f"{param} {record.id} holds "
                f"{'preference pairs' if wanted == CHAT else 'chat examples'}; method "
                f"{req.method_type} needs "
                f"{'preference pairs (OpenAI DPO format)' if wanted == PAIRS else 'chat examples'}",
                param=param,
                code="invalid_file",
            )
    request_record = {
        "hyperparameters": resolved_hyperparameters(cfg, req),
        "metadata": req.metadata,
        "method": req.method_type,
    }
    job = JobRecord(
        job_id,
        now(),
        "validating_files",
        req.model,
        training.id,
        validation.id if validation else None,
        req.suffix,
        seed,
        request_record,
    )
    studio.store.add_job(job)
    studio.store.add_event(job_id, f"Validating training file: {training.id}")
    cfg.run_dir.mkdir(parents=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    studio.store.add_event(
        job_id,
        f"Files validated ({training.rows} training examples), moving job to queued state",
    )
    studio.store.set_status(job_id, "queued", only_from=("validating_files",))
    studio.runner.wake()
    return studio.store.job(job_id)


async def cancel_job(studio: Studio, job: JobRecord) -> JobRecord:
    """Cancel a job: at once when it has not started, else ask the runner and wait until its
    process has stopped (at most the runner's grace period and a little)."""
    if job.status in FINISHED:
        raise ApiError(400, f"the job has already {job.status}; it cannot be cancelled")
    if studio.store.set_status(job.id, "cancelled", only_from=("validating_files", "queued")):
        studio.store.add_event(job.id, "The job was cancelled")
        return studio.store.job(job.id)
    studio.store.update_job(job.id, cancel_requested=1)
    studio.runner.wake()
    deadline = asyncio.get_running_loop().time() + TERM_GRACE_S + 5
    while asyncio.get_running_loop().time() < deadline:  # answer once it has stopped
        job = studio.store.job(job.id)
        if job.status != "running":
            break
        await asyncio.sleep(0.1)
    return job


def job_run_config(
    studio: Studio, req: JobCreate, *, job_id: str, runs_dir: Path, seed: int = 0
) -> RunConfig:
    """The run config of a create request, its run folder in `runs_dir` (jobs: the studio's
    runs/; the New job page's dry run: a scratch folder); raises ApiError (400/404) naming the
    bad field."""
    base = studio.base_model(req.model)
    if base is None:
        raise ApiError(
            404,
            f"the model '{req.model}' is not a base model of this studio; it fine-tunes "
            f"{', '.join(studio.base_names())}",
            param="model",
            code="model_not_found",
        )
    training = _job_file(studio, req.training_file, "training_file")
    validation = (
        _job_file(studio, req.validation_file, "validation_file") if req.validation_file else None
    )
    try:
        return job_config(
            req,
            job_id=job_id,
            seed=seed,
            model_source=base.source,
            training_path=content_path(studio.files_dir, training.sha256),
            validation_path=content_path(studio.files_dir, validation.sha256)
            if validation
            else None,
            runs_dir=runs_dir,
            recipe=chosen_recipe(req.metadata, studio.settings.recipes_dir),
        )
    except ConfigError as e:
        raise ApiError(400, str(e), param="metadata") from None


# --- helpers ---------------------------------------------------------------------------------
def find_file(studio: Studio, file_id: str) -> FileRecord:
    """The file of a client-given id, or a 404 ApiError."""
    record = studio.store.file(file_id) if FILE_ID.fullmatch(file_id) else None
    if record is None:
        raise ApiError(404, f"no such file: {file_id!r}", param="file_id", code="not_found")
    return record


def _job_file(studio: Studio, file_id: str, param: str) -> FileRecord:
    record = studio.store.file(file_id) if FILE_ID.fullmatch(file_id) else None
    if record is None:
        raise ApiError(400, f"{param}: no such file: {file_id!r}", param=param)
    if record.purpose != PURPOSE:
        raise ApiError(400, f"{param}: {file_id} was uploaded for '{record.purpose}'", param=param)
    return record


def find_job(studio: Studio, job_id: str) -> JobRecord:
    """The job of a client-given id, or a 404 ApiError."""
    job = studio.store.job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise ApiError(
            404,
            f"no such fine-tuning job: {job_id!r}",
            param="fine_tuning_job_id",
            code="not_found",
        )
    return job


def _limit(limit: int) -> int:
    if not 1 <= limit <= 100:
        raise ApiError(400, f"limit must be 1 to 100 (got {limit})", param="limit")
    return limit


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the file is over {limit} bytes", param="file", code="file_too_large")


async def _json_body(request: Request, limit: int) -> dict:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body
