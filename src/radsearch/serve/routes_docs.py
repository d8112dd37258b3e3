"""``/docs``: the OpenAPI page (Swagger UI) with its files from an installed package.

FastAPI's default page loads Swagger UI from a CDN, so it is blank inside a hospital
network. PyPI's ``fastapi-offline`` (in the ``[serve]`` extra) ships Swagger UI 5, which
reads the OpenAPI 3.1 that FastAPI writes; its files are served from ``/docs/assets/``.
Without the package the page falls back to the CDN. (ReDoc is not offered: its page
still fetches its logo from the vendor's CDN.)
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

from radsearch.serve.context import ServeContext

ASSETS_URL = "/docs/assets"
OPENAPI_URL = "/openapi.json"
TITLE = "radsearch API"


def docs_assets() -> Path | None:
    """The folder holding the installed Swagger UI files, or None."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).with_name("static")
    needed = ("swagger-ui-bundle.js", "swagger-ui.css")
    return path if all((path / name).is_file() for name in needed) else None


def router(ctx: ServeContext) -> APIRouter:
    docs = APIRouter(include_in_schema=False)
    assets = docs_assets()
    swagger = {}
    if assets is not None:
        docs.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
        swagger = {
            "swagger_js_url": f"{ASSETS_URL}/swagger-ui-bundle.js",
            "swagger_css_url": f"{ASSETS_URL}/swagger-ui.css",
            "swagger_favicon_url": f"{ASSETS_URL}/favicon.png",
        }

    @docs.get("/docs")
    def swagger_page():
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=TITLE, **swagger)

    return docs
