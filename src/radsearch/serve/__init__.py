"""HTTP API and web UI: ``radsearch serve INDEX_DIR`` (FastAPI + uvicorn).

``create_app`` builds the app for an index directory; see ``docs/serve.md``.
"""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):
    from radsearch.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
