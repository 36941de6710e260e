"""The Data pages: upload a chat JSONL (checked as `POST /v1/files` checks it, by the same
`add_file`) or pick an uploaded one, then see what the data stage makes of it (analysis.py):
rows kept, quarantine, duplicates and leakage, PII, token lengths, and a few chats with the
trained tokens highlighted."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from tunewright.errors import TunewrightError
from tunewright.serve.app import ApiError
from tunewright.studio.app import add_file, find_file
from tunewright.studio.pages.analysis import analyse
from tunewright.studio.pages.render import render
from tunewright.studio.state import Studio
from tunewright.studio.store import FileRecord


def add_routes(app: FastAPI, studio: Studio) -> None:
    @app.get("/data", include_in_schema=False)
    async def data_page(request: Request):
        return render(request, "data.html", files=studio.store.files(), error=None)

    @app.post("/data", include_in_schema=False)
    async def upload(request: Request):
        try:
            record = await _upload(request, studio)
        except ApiError as e:
            return render(
                request,
                "data.html",
                status=e.status,
                files=studio.store.files(),
                error=e.body["error"]["message"],
            )
        return RedirectResponse(f"/data/{record.id}", status_code=303)

    @app.get("/data/{file_id}", include_in_schema=False)
    async def file_page(request: Request, file_id: str):
        record = find_file(studio, file_id)
        try:
            report = await asyncio.to_thread(analyse, studio, record)
        except TunewrightError as e:  # e.g. too few examples to split: what a job would hit
            return render(
                request,
                "data.html",
                status=400,
                files=studio.store.files(),
                error=f"{record.filename}: the data stage stopped: {e}",
            )
        return render(request, "data_file.html", file=record, report=report)


async def _upload(request: Request, studio: Studio) -> FileRecord:
    limit = studio.settings.max_upload_bytes
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as e:  # starlette's MultiPartException and friends
        raise ApiError(400, f"the upload could not be read: {e}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str) or not upload.filename:
        raise ApiError(400, "choose a .jsonl file to upload")
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise ApiError(413, f"the file is over {limit} bytes")
    return await asyncio.to_thread(add_file, studio, content, upload.filename)
