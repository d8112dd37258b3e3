"""HTTP API and web UI: ``radsearch serve INDEX_DIR`` (FastAPI + uvicorn).

``create_app`` builds the app for an index directory; see ``docs/serve.md``. Modules:
``app`` (the app and its error handlers), ``context`` (what every route shares, the
privacy rules), ``batcher`` (concurrent queries share one forward pass), ``routes_api``
/ ``routes_studies`` / ``routes_regions`` / ``routes_ui`` / ``routes_docs`` (the
routes), ``guard`` (Host, token and body-size checks before FastAPI), ``server``
(uvicorn with connection limits and timeouts), ``cli`` (the verb). This package imports
no FastAPI until the app is built, so the CLI starts fast.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_K",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "create_app",
]

# Request limits (here, not in app.py, so the CLI can show them without FastAPI).
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_K = 100
# Connection hardening (serve/server.py).
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0


def create_app(*args, **kwargs):
    from radsearch.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
