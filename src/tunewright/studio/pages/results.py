"""The Report and Compare pages.

Report shows the run's own `report.html` (written by `evaluate/html_report.py` at the end of the
run, the same file the CLI writes) inside the app: its verdict large, its headline figures as
tiles, then its sections (metrics with intervals, forgetting check, training, confusion matrix,
examples won and lost) as cards. Nothing is recomputed, so the app and the file never disagree.

Compare sends one prompt to two served models (base, a fine-tuned job, any two) through the
server's own `/v1/chat/completions` with `stream=true`, from the page's JavaScript.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from markupsafe import Markup

from tunewright.runs import RunFolder
from tunewright.serve.app import ApiError
from tunewright.studio.cli_runs import find_run, run_view, serve_cli_runs
from tunewright.studio.pages.render import render
from tunewright.studio.state import Studio

REPORT_FILE = "report.html"
_VERDICT = re.compile(r"<p class=verdict>(.*?)</p>", re.S)
_BODY = re.compile(r"<body>(.*)</body>", re.S)
COMPARE_MAX_TOKENS = 64  # the default answer length on the Compare page


def report_parts(html: str) -> tuple[Markup, list[Markup]]:
    """report.html's verdict and its `<h2>` sections (already escaped HTML written by
    html_report.py, so they are marked safe)."""
    found = _VERDICT.search(html)
    verdict = Markup(found.group(1)) if found else Markup("")
    body = _BODY.search(html)
    sections = (body.group(1) if body else html).split("<h2>")[1:]  # [0]: the title and verdict
    return verdict, [Markup("<h2>" + s) for s in sections]


def verdict_tone(verdict: str) -> str:
    if "is better than" in verdict:
        return "good"
    if "is worse than" in verdict:
        return "bad"
    return "neutral"


def headline(results: dict | None) -> dict | None:
    """The tiles over the report: the headline metric of tuned and of the strongest base, with
    intervals, and their difference with its interval and p-value."""
    if not results:
        return None
    name = results.get("headline")
    models = results.get("models", {})
    base_name = results.get("strongest_base")

    def metric(model: str | None):
        return models.get(model, {}).get("metrics", {}).get(name) if model else None

    return {
        "metric": name,
        "n": results.get("n_examples"),
        "tuned": metric("tuned"),
        "base_name": base_name,
        "base": metric(base_name),
        "comparison": results.get("comparison") or None,
    }


def add_routes(app: FastAPI, studio: Studio) -> None:
    @app.get("/report/{job_id}", include_in_schema=False)
    async def report_page(request: Request, job_id: str):
        """A job's report, or a CLI run's (by its folder name)."""
        job, run_dir = find_run(studio, job_id)
        view = await asyncio.to_thread(run_view, studio, job)
        path = run_dir / REPORT_FILE
        if not path.is_file():
            return render(
                request, "report.html", job=job, verdict=None, sections=[], tiles=None, **view
            )
        verdict, sections = report_parts(path.read_text(encoding="utf-8"))
        return render(
            request,
            "report.html",
            job=job,
            **view,
            verdict=verdict,
            tone=verdict_tone(str(verdict)),
            sections=sections,
            tiles=headline(_read_json(RunFolder(run_dir).eval_dir / "results.json")),
        )

    @app.get("/report/{job_id}/report.html", include_in_schema=False)
    async def report_file(job_id: str):
        """The run's report.html itself, to save or mail (self-contained, no scripts)."""
        path = find_run(studio, job_id)[1] / REPORT_FILE
        if not path.is_file():
            raise ApiError(404, "this run has no report yet", code="not_found")
        return FileResponse(path, media_type="text/html")

    @app.get("/compare", include_in_schema=False)
    async def compare_page(request: Request, a: str = "", b: str = ""):
        await asyncio.to_thread(serve_cli_runs, studio)  # made since the studio started
        names = list(studio.models.served)
        base = studio.base_names()
        tuned = [n for n in names if n not in base]
        default_a = a if a in names else (base[0] if base else "")
        default_b = b if b in names else (tuned[-1] if tuned else default_a)
        return render(
            request,
            "compare.html",
            models=names,
            base=base,
            a=default_a,
            b=default_b,
            max_tokens=COMPARE_MAX_TOKENS,
        )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
