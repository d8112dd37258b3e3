"""The FastAPI app behind ``radsearch serve``: search API, item images, web UI.

One ``Index`` and its encoder are loaded when the app is created; every search goes
through ``radsearch.search.search_index`` so hits are exactly those of
``radsearch search --json``. Security rules (see ``docs/serve.md``):

- with ``token``, every ``/api`` request needs ``Authorization: Bearer <token>``;
- request bodies over ``max_upload_bytes`` get 413 (checked on ``Content-Length`` and
  while streaming), images over ``max_pixels`` get 422 before any pixel is decoded;
- images are served only for ids present in the index, read from the index's own
  ``source`` column: nothing the client sends is ever used as a path;
- PHI columns (``PHI_COLUMNS``) are stripped from every response unless ``show_phi``,
  and cannot be filtered or voted on;
- CORS is off unless ``cors_origins`` is given; errors are ``{"error": message}``.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from radsearch.errors import ImageReadError, RadsearchError
from radsearch.serve import DEFAULT_MAX_K, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES

log = logging.getLogger("radsearch.serve")

STATIC = Path(__file__).with_name("static")
PHI_COLUMNS = ("patient_name", "patient_id", "patient_birth_date")
# Room for the multipart boundaries and small form fields around the file itself.
MULTIPART_SLACK = 64 * 1024
THUMB_CACHE_SIZE = 512
# Columns offered as filter drop-downs when they have at most this many values.
FILTER_MAX_VALUES = 60
_UPLOAD_SUFFIXES = (
    ".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
    ".bmp", ".gif", ".webp",
)
_NOT_FILTERS = ("id", "source", "pacs_url", "viewer_url", "sop_uid", "series_uid", "study_uid")
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_CSP = (
    b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
    b"style-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)


# -- small helpers --------------------------------------------------------------------
def _strip(d: dict, show_phi: bool) -> dict:
    if show_phi:
        return d
    return {k: v for k, v in d.items() if k not in PHI_COLUMNS}


def _upload_suffix(filename: str) -> str:
    """The client's file extension if it is one we read; the name is used for nothing else."""
    lower = (filename or "").lower()
    for suffix in _UPLOAD_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return ""


def _display_name(filename: str | None) -> str:
    name = os.path.basename((filename or "").replace("\\", "/")) or "upload"
    return "".join(c for c in name if c.isprintable())[:200]


def image_dims(path: str, kind: str) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when the header cannot say."""
    if kind == "raster":
        from PIL import Image

        try:
            with Image.open(path) as img:
                return img.size
        except Image.DecompressionBombError as exc:
            m = re.search(r"\((\d+) pixels\)", str(exc))
            n = int(m.group(1)) if m else 10**12
            return n, 1
        except Exception:
            return None  # the decoder reports why
    if kind == "dicom":
        from radsearch.io.dicom import read_dicom_header

        ds = read_dicom_header(path)
        return int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)
    if kind == "nifti":
        import nibabel as nib

        try:
            shape = nib.load(path).shape
        except Exception:
            return None
        if len(shape) < 2:
            return None
        dims = sorted((int(s) for s in shape[:3]), reverse=True)
        return dims[0], dims[1]  # the largest plane any slice direction can have
    return None


def encode_png(rgb: np.ndarray, size: int | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    if size:
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


# -- raw ASGI guard: token, body cap, security headers -----------------------------
async def _send_json(send, status: int, message: str, headers: list | None = None) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *_SECURITY_HEADERS,
            *(headers or []),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Outermost layer: bearer token on ``/api``, request-body cap, security headers.

    Runs before FastAPI parses anything, so an unauthenticated or oversized upload is
    refused without being buffered.
    """

    def __init__(self, app, token: str | None, max_body: int):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body

    def _authorised(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, cred = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self.token)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        is_api = path == "/api" or path.startswith("/api/")
        extra = list(_SECURITY_HEADERS)
        if not path.startswith(("/docs", "/redoc")):
            extra.append((b"content-security-policy", _CSP))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in extra if k not in have
                ]
            await send(message)

        if is_api and self.token is not None and scope.get("method") != "OPTIONS":
            if not self._authorised(scope):
                return await _send_json(
                    send, 401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                    [(b"www-authenticate", b'Bearer realm="radsearch"')],
                )
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send_with_headers)

        too_big = f"request body too large (limit {self.max_body} bytes)"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, "bad Content-Length header")
                if declared > self.max_body:
                    return await _send_json(send, 413, too_big, [(b"connection", b"close")])
        state = {"seen": 0, "over": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_body:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not state["over"]:
                await send_with_headers(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"]:
            await _send_json(send, 413, too_big, [(b"connection", b"close")])


# -- the app ------------------------------------------------------------------------
def create_app(
    index_path,
    token: str | None = None,
    show_phi: bool = False,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_k: int = DEFAULT_MAX_K,
    cors_origins: list[str] | None = None,
    device: str = "cpu",
):
    """The ASGI app serving the index at ``index_path`` (see module docstring)."""
    from radsearch import __version__
    from radsearch.index import Index
    from radsearch.io.items import ItemRef, file_kind, load_pixels
    from radsearch.io.sources import parse_where
    from radsearch.search import search_index

    index = Index.open(index_path)
    index.encoder(device=device)  # load the model once, now, not on the first query
    index.row_of("")  # build the id -> row map once
    search_lock = threading.Lock()
    thumbs = _LRU(THUMB_CACHE_SIZE)
    columns = [c for c in index.items.column_names if c not in ("id", "source")]
    public_columns = [c for c in columns if show_phi or c not in PHI_COLUMNS]

    def _filters() -> dict:
        import pyarrow.compute as pc

        out = {}
        for col in public_columns:
            if col in _NOT_FILTERS:
                continue
            values = [v for v in pc.unique(index.items.column(col)).to_pylist() if v not in ("", None)]
            if 1 < len(values) <= FILTER_MAX_VALUES:
                out[col] = sorted(map(str, values))
        return out

    filters = _filters()
    info = {
        "name": "radsearch",
        "version": __version__,
        "encoder": index.encoder_name,
        "encoder_hash": index.manifest["encoder"]["hash"],
        "dim": index.dim,
        "metric": index.manifest.get("metric"),
        "count": index.count,
        "index_type": (index.manifest.get("store") or {}).get("type", "flat"),
        "store": index.manifest.get("store"),
        "recipe": (index.manifest.get("recipe") or {}).get("name") if index.manifest.get("recipe") else None,
        "metadata_columns": public_columns,
        "filters": filters,
        "pacs_links": "pacs_url" in columns or "viewer_url" in columns,
        "show_phi": show_phi,
        "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_k": max_k},
    }

    app = FastAPI(
        title="radsearch",
        version=__version__,
        description="Content-based image retrieval for radiology: search an index by image.",
    )

    # -- errors: always {"error": message}, never a traceback ---------------------
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

    # -- API ----------------------------------------------------------------------
    @app.get("/api/health", tags=["api"])
    def health() -> dict:
        return {"status": "ok", "count": index.count}

    @app.get("/api/info", tags=["api"])
    def api_info() -> dict:
        return info

    def _read_query(upload: UploadFile, name: str, frame: int | None) -> np.ndarray:
        size = upload.size
        if size is None:
            upload.file.seek(0, os.SEEK_END)
            size = upload.file.tell()
        upload.file.seek(0)
        if size > max_upload_bytes:
            raise HTTPException(413, f"upload too large: {size} bytes > limit {max_upload_bytes}")
        if size == 0:
            raise ImageReadError(name, "empty upload")
        suffix = _upload_suffix(upload.filename or "")
        fd, tmp = tempfile.mkstemp(prefix="radsearch-query-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := upload.file.read(1 << 20):
                    fh.write(chunk)
            try:
                kind = file_kind(tmp)
                dims = image_dims(tmp, kind)
                if dims and dims[0] * dims[1] > max_pixels:
                    raise ImageReadError(
                        name,
                        f"image too large: {dims[0]}x{dims[1]} pixels > limit {max_pixels} "
                        "(radsearch serve --max-pixels)",
                    )
                if kind == "nifti" and frame is None:
                    from radsearch.io.nifti import nifti_slice_count

                    frame = nifti_slice_count(tmp) // 2  # middle axial slice
                pixels = load_pixels(ItemRef(id=name, source=tmp, frame=frame or 0))
            except ImageReadError as exc:
                raise ImageReadError(name, exc.reason) from None  # no temp path in messages
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if pixels.shape[0] * pixels.shape[1] > max_pixels:
            raise ImageReadError(name, f"image too large: {pixels.shape[1]}x{pixels.shape[0]} "
                                       f"pixels > limit {max_pixels}")
        return pixels

    @app.post("/api/search", tags=["api"])
    def api_search(
        file: Annotated[UploadFile, File(description="query image: PNG, JPEG, TIFF, DICOM or NIfTI")],
        k: Annotated[int, Form(ge=1, description="number of hits")] = 10,
        where: Annotated[list[str] | None, Form(
            description="metadata filters COLUMN=VALUE (VALUE may be A,B); repeatable")] = None,
        one_per_patient: Annotated[bool, Form(description="at most one hit per patient")] = False,
        suggest: Annotated[str, Form(description="metadata column for the majority vote")] = "label",
        slice: Annotated[int | None, Form(
            ge=0, description="NIfTI slice / DICOM frame (default: middle slice / first frame)")] = None,
        preview: Annotated[bool, Form(description="also return the query as a PNG data URL")] = False,
    ) -> dict:
        if k > max_k:
            raise HTTPException(422, f"k={k} is above the limit {max_k}")
        where_map = parse_where(where) or None
        if not show_phi:
            for col in list(where_map or {}) + [suggest]:
                if col in PHI_COLUMNS:
                    raise HTTPException(400, f"column {col!r} is protected health information; "
                                             "the server was not started with --show-phi")
        name = _display_name(file.filename)
        pixels = _read_query(file, name, slice)
        t0 = time.perf_counter()
        with search_lock:
            result = search_index(
                index, [pixels], k=k, where=where_map, one_per_patient=one_per_patient,
                suggest=suggest or None, names=[name],
            )[0]
        out = result.to_dict()
        out["hits"] = [_strip(h, show_phi) for h in out["hits"]]
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        if preview:
            png = encode_png(pixels, 384)
            out["query_image"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return out

    def _row_or_404(item_id: str) -> int:
        row = index.row_of(item_id)
        if row is None:
            raise HTTPException(404, "no such item in the index")
        return row

    @app.get("/api/items/{item_id:path}/image", tags=["api"],
             responses={200: {"content": {"image/png": {}}}})
    def item_image(item_id: str, size: Annotated[int | None, Query(ge=16, le=2048)] = None):
        row = _row_or_404(item_id)
        key = (row, size)
        png = thumbs.get(key)
        if png is None:
            try:
                pixels = load_pixels(index.ref(row))
            except ImageReadError as exc:
                raise HTTPException(404, f"image of this item is not available ({exc.reason})") from None
            png = encode_png(pixels, size)
            thumbs.put(key, png)
        return Response(png, media_type="image/png",
                        headers={"cache-control": "private, max-age=3600"})

    @app.get("/api/items/{item_id:path}", tags=["api"])
    def item(item_id: str) -> dict:
        row = _row_or_404(item_id)
        return _strip(index.rows([row])[0], show_phi)

    # -- UI -----------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def ui():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(Guard, token=token, max_body=max_upload_bytes + MULTIPART_SLACK)
    app.state.index = index
    app.state.settings = {
        "show_phi": show_phi, "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels, "max_k": max_k, "token": bool(token),
        "cors_origins": list(cors_origins or []),
    }
    return app
