"""The web UI: ``/`` and its static files (no external resources: hospital networks)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from radsearch.serve.context import ServeContext

STATIC = Path(__file__).with_name("static")


def router(ctx: ServeContext) -> APIRouter:
    ui = APIRouter(include_in_schema=False)

    @ui.get("/")
    def page():
        return FileResponse(STATIC / "index.html")

    ui.mount("/static", StaticFiles(directory=STATIC), name="static")
    return ui
