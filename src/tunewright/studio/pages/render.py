"""Jinja2 templates of the studio's pages (`studio/templates/`), rendered on the server."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).parent.parent / "templates"
STATIC = Path(__file__).parent.parent / "static"

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(ts: int | None) -> str:
    """A unix time as the studio shows it: local date and minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "—"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return "under 1 s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


_env.filters.update(when=when, size=_size, duration=_duration)


def render(request: Request, template: str, *, status: int = 200, **context) -> HTMLResponse:
    """The page `template` with `context`; every page gets the current path for the nav bar."""
    html = _env.get_template(template).render(path=request.url.path, **context)
    return HTMLResponse(html, status_code=status)
