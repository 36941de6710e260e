"""stub"""

from __future__ import annotations

from fastapi import FastAPI

from tunewright.studio.state import Studio


def add_routes(app: FastAPI, studio: Studio) -> None:
    pass
