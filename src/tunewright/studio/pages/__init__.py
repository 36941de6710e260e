"""The studio's web app: server-rendered pages (Jinja2 templates and one stylesheet and script,
all inside the package) on top of the same functions as the jobs API.

    /login                 sign in with the API key (only when the studio has one; auth.py)
    /data, /data/{file}    upload or pick a file; what the data stage makes of it (data.py,
                           analysis.py)
    /new                   a job from a recipe and a file or the recipe's own data, with a
                           dry-run estimate (new_job.py, recipe_data.py)
    /jobs, /jobs/{job}     the queue; one job live: loss curve, log, cancel (jobs.py)
    /runs/{name}           a run made with the CLI in the runs folder, read-only (jobs.py,
                           cli_runs.py); /report and /export take its name as they take a job id
    /report/{job}          the finished run's evaluation report (results.py)
    /compare               two served models answering one prompt side by side (results.py)
    /export/{job}          adapter / merged / GGUF with parity, and downloads (export.py)
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from tunewright.studio.pages import data, export, jobs, new_job, results
from tunewright.studio.pages.auth import COOKIE, LOGIN, add_cookie_auth, valid_key
from tunewright.studio.pages.render import STATIC, render
from tunewright.studio.state import Studio


def add_pages(app: FastAPI, studio: Studio) -> None:
    """Add the web app's routes, static files and sign-in to the studio's app."""
    key = studio.settings.api_key
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_cookie_auth(app, key)

    @app.get("/", include_in_schema=False)
    async def home():
        return RedirectResponse("/jobs", status_code=303)

    @app.get(LOGIN, include_in_schema=False)
    async def login_form(request: Request, next: str = "/jobs"):
        return render(request, "login.html", next=local_path(next), error=None)

    @app.post(LOGIN, include_in_schema=False)
    async def login(
        request: Request, key_given: str = Form("", alias="key"), next: str = Form("/jobs")
    ):
        if not key:  # nothing to sign in to
            return RedirectResponse(local_path(next), status_code=303)
        if not valid_key(key_given, key):
            return render(
                request,
                "login.html",
                status=401,
                next=local_path(next),
                error="That is not the key.",
            )
        response = RedirectResponse(local_path(next), status_code=303)
        response.set_cookie(COOKIE, key_given, httponly=True, samesite="strict")
        return response

    for module in (data, new_job, jobs, results, export):
        module.add_routes(app, studio)


def local_path(target: str) -> str:
    """Only a path on this server is a place to go after signing in (no open redirect)."""
    parts = urlsplit(target)
    # browsers read a backslash as a slash: "/\evil.example" would leave the site
    if parts.scheme or parts.netloc or not target.startswith("/") or target[1:2] in ("/", "\\"):
        return "/jobs"
    return target
