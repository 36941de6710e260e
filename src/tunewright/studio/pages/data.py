"""The Data pages: upload a chat JSONL (checked as `POST /v1/files` checks it) or pick an
uploaded one, then see what the data stage makes of it (analysis.py): rows kept, quarantine,
duplicates and leakage, PII, token lengths and a few chats with the trained tokens highlighted."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from tunewright.serve.app import ApiError
from tunewright.studio.app import add_file, find_file
from tunewright.studio.pages.render import render
from tunewright.studio.state import Studio


def add_routes(app: FastAPI, studio: Studio) -> None:
    @app.get("/data", include_in_schema=False)
    async def data_page(request: Request):
        return render(request, "data.html", files=studio.store.files(), error=None)

    @app.post("/data", include_in_schema=False)
    async def upload(request: Request):
        limit = studio.settings.max_upload_bytes
        error = None
        try:
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("file")
            if upload is None or isinstance(upload, str) or not upload.filename:
                raise ApiError(400, "choose a .jsonl file to upload")
            content = await upload.read(limit + 1)
            if len(content) > limit:
                raise ApiError(413, f"the file is over {limit} bytes")
            record = await asyncio.to_thread(add_file, studio, content, upload.filename)
        except ApiError as e:
            error = e.body["error"]["message"]
        if error is not None:
            return render(request, "data.html", status=400, files=studio.store.files(), error=error)
        return RedirectResponse(f"/data/{record.id}", status_code=303)

    @app.get("/data/{file_id}", include_in_schema=False)
    async def file_page(request: Request, file_id: str):
        from tunewright.studio.pages.analysis import analyse

        record = find_file(studio, file_id)
        report = await asyncio.to_thread(analyse, studio, record)
        return render(request, "data_file.html", file=record, report=report)
