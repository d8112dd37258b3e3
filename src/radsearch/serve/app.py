"""The FastAPI app behind ``radsearch serve``: search API, item images, web UI.

One ``Index`` and its encoder are loaded when the app is created; every search goes
through ``radsearch.search.search_index`` so hits are exactly those of
``radsearch search --json``. The routes live in ``routes_*`` modules (``ROUTE_MODULES``),
each a ``router(ctx) -> APIRouter`` over one shared ``ServeContext``; a feature adds
its module to the list. Security rules (see ``docs/serve.md``):

- requests whose ``Host`` is not this server's are refused (``Guard``; DNS rebinding);
- with ``token``, every ``/api`` request needs ``Authorization: Bearer <token>``;
- request bodies over ``max_upload_bytes`` get 413 (checked on ``Content-Length`` and
  while streaming); uploads are probed and decoded by ``radsearch.io.upload`` (pixel
  cap on the header, a decode memory budget, any malformed file a 422);
- images are served only for ids present in the index, read from the index's own
  ``source`` column: nothing the client sends is ever used as a path;
- PHI columns are stripped from every response unless ``show_phi`` and cannot be
  filtered or voted on; ``source`` paths are stripped unless ``show_paths``;
- CORS is off unless ``cors_origins`` is given; errors are ``{"error": message}``.
"""

from __future__ import annotations

import logging
from importlib import import_module

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from radsearch.errors import ImageReadError, RadsearchError
from radsearch.io.upload import DEFAULT_DECODE_MEMORY, DecodeBudget
from radsearch.serve import DEFAULT_MAX_K, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES
from radsearch.serve.batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW, QueryBatcher
from radsearch.serve.context import ServeContext, Settings
from radsearch.serve.guard import Guard, allowed_hosts_for

log = logging.getLogger("radsearch.serve")

ROUTE_MODULES = [
    "radsearch.serve.routes_api",
    "radsearch.serve.routes_ui",
    "radsearch.serve.routes_docs",
    "radsearch.serve.routes_studies",
    "radsearch.serve.routes_regions",
]
# Room for the multipart boundaries and small form fields around the file itself.
MULTIPART_SLACK = 64 * 1024
# Columns offered as filter drop-downs when they have at most this many values.
FILTER_MAX_VALUES = 60
_NOT_FILTERS = (
    "id",
    "source",
    "pacs_url",
    "viewer_url",
    "sop_uid",
    "series_uid",
    "study_uid",
    "study_id",
)


def _filters(index, columns: list[str]) -> dict:
    import pyarrow.compute as pc

    out = {}
    for col in columns:
        if col in _NOT_FILTERS:
            continue
        values = [v for v in pc.unique(index.items.column(col)).to_pylist() if v not in ("", None)]
        if 1 < len(values) <= FILTER_MAX_VALUES:
            out[col] = sorted(map(str, values))
    return out


def _info(ctx: ServeContext) -> dict:
    from radsearch import __version__

    index, s = ctx.index, ctx.settings
    columns = [c for c in index.items.column_names if c not in ("id", "source")]
    public = [c for c in columns if c not in ctx.hidden()]
    recipe = index.manifest.get("recipe") or {}
    return {
        "name": "radsearch",
        "version": __version__,
        "encoder": index.encoder_name,
        "encoder_hash": index.manifest["encoder"]["hash"],
        "dim": index.dim,
        "metric": index.manifest.get("metric"),
        "count": index.count,
        "index_type": (index.manifest.get("store") or {}).get("type", "flat"),
        "store": index.manifest.get("store"),
        "recipe": recipe.get("name") if recipe else None,
        "metadata_columns": public,
        "filters": _filters(index, public),
        "pacs_links": "pacs_url" in columns or "viewer_url" in columns,
        "regions": bool(index.manifest.get("regions")),  # roi search, match boxes, explain
        "show_phi": s.show_phi,
        "show_paths": s.show_paths,
        "limits": {
            "max_upload_bytes": s.max_upload_bytes,
            "max_pixels": s.max_pixels,
            "max_k": s.max_k,
            "decode_memory_bytes": ctx.budget.total,
        },
        "batching": {
            "max_batch": ctx.batcher.max_batch,
            "window_s": ctx.batcher.window,
            "workers": ctx.batcher.workers,
        },
        "runtime": (getattr(index.encoder(), "runtime_info", None) or {}).get("runtime", "torch"),
    }


def _add_error_handlers(app: FastAPI) -> None:
    """Errors are always ``{"error": message}``, never a traceback."""

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, 422)

    @app.exception_handler(ImageReadError)
    async def _image_error(request, exc: ImageReadError):
        return JSONResponse({"error": str(exc)}, 422)

    @app.exception_handler(RadsearchError)
    async def _user_error(request, exc: RadsearchError):
        return JSONResponse({"error": str(exc)}, 400)

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__})"}, 500)


def _build_app(ctx: ServeContext, token: str | None, hosts: frozenset[str]) -> FastAPI:
    """The FastAPI app over ``ctx``: error handlers, every route module, the guard."""
    from radsearch import __version__

    app = FastAPI(
        title="radsearch",
        version=__version__,
        description="Content-based image retrieval for radiology: search an index by image.",
        docs_url=None,  # routes_docs serves /docs from local files
        redoc_url=None,
    )
    _add_error_handlers(app)
    for name in ROUTE_MODULES:
        app.include_router(import_module(name).router(ctx))
    s = ctx.settings
    if s.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(
        Guard, token=token, max_body=s.max_upload_bytes + MULTIPART_SLACK, allowed_hosts=hosts
    )
    return app


def encoder_plan(encoder, runtime: str, batch_max: int, threads: int | None) -> int:
    """Set the query encoder's runtime and threads; the number of batch workers.

    Lite0 on ONNX Runtime costs no less per image in a stacked batch, and an intra-op
    thread pool spends CPU on hand-offs, so a batching server runs one batch per core
    side by side (ORT releases the GIL), each on one thread, while a lone query still
    gets every core (``ConcurrentOnnxModule``). One query at a time (``batch_max=1``)
    and eager torch get one worker whose forward pass uses every core.
    """
    from radsearch.encoders.accel import OnnxModule, accelerate, cpu_threads

    cores = threads or cpu_threads()
    if runtime == "torch":
        return 1
    accelerate(encoder, runtime, threads=cores)  # load and export now, not on a query
    if not isinstance(encoder.module, OnnxModule) or batch_max == 1 or cores == 1:
        return 1
    encoder.module = encoder.module.concurrent(cores)
    encoder.module.narrow(_probe_input(encoder))  # sessions start now, not on a query
    encoder.module(_probe_input(encoder))
    return cores


def _probe_input(encoder):
    import torch

    size = encoder.config.input_size
    return torch.zeros(1, 3, size, size)


def create_app(
    index_path,
    token: str | None = None,
    show_phi: bool = False,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_k: int = DEFAULT_MAX_K,
    cors_origins: list[str] | None = None,
    device: str = "cpu",
    *,
    show_paths: bool = False,
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    decode_memory: int = DEFAULT_DECODE_MEMORY,
    batch_max: int = DEFAULT_MAX_BATCH,
    batch_window: float = DEFAULT_WINDOW,
    runtime: str = "torch",
    threads: int | None = None,
):
    """The ASGI app serving the index at ``index_path`` (see module docstring).

    ``host`` is the address the server binds: requests must name it (or loopback, or
    one of ``allowed_hosts``; ``"*"`` allows any) in their ``Host`` header. Concurrent
    searches are embedded together, up to ``batch_max`` queries collected for at most
    ``batch_window`` seconds (``batch_max=1``: one at a time; see ``serve/batcher.py``).
    ``runtime``: the query encoder's inference runtime (``encoders.accel``): ``torch``
    (default) gives exactly the hits of ``radsearch search``; ``onnx``/``auto`` are several
    times faster on the CPU, with vectors within 1e-3 cosine of torch's. ``threads``: ONNX
    Runtime's intra-op threads (default: every core this process may use; a batch of
    queries spreads over them).
    """
    from radsearch.index import Index

    index = Index.open(index_path)
    workers = encoder_plan(index.encoder(device=device), runtime, batch_max, threads)
    index.row_of("")  # build the id -> row map once
    hosts = allowed_hosts_for(host, allowed_hosts or ())
    settings = Settings(
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_k=max_k,
        show_phi=show_phi,
        show_paths=show_paths,
        token=bool(token),
        cors_origins=list(cors_origins or []),
        allowed_hosts=sorted(hosts),
    )
    ctx = ServeContext(
        index=index,
        settings=settings,
        budget=DecodeBudget(decode_memory),
        batcher=QueryBatcher(index, batch_max, batch_window, workers),
    )
    ctx.info = _info(ctx)

    app = _build_app(ctx, token, hosts)
    app.state.index = index
    app.state.ctx = ctx
    app.state.settings = settings
    return app
