"""``/api``: health, index information, search by image, indexed items and their images.

Hits are exactly those of ``radsearch search --json`` (plain queries through the
batcher, region and feedback queries through ``Index.search``: ``routes_regions``), less
the columns ``ServeContext.public`` hides. Item ids may hold any character, a newline
included: the id route parameter matches across lines (``anypath``).
"""

from __future__ import annotations

import base64
import io
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException

from radsearch.errors import ImageReadError
from radsearch.serve.context import ServeContext
from radsearch.serve.routes_regions import region_options, search_marked


class AnyPathConvertor(PathConvertor):
    """Like ``path``, but also across newlines (an id is whatever the source named)."""

    regex = "(?s:.*)"


register_url_convertor("anypath", AnyPathConvertor())


def encode_png(rgb: np.ndarray, size: int | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    if size:
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def router(ctx: ServeContext) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["api"])

    @api.get("/health")
    def health() -> dict:
        return {"status": "ok", "count": ctx.index.count}

    @api.get("/info")
    def api_info() -> dict:
        return ctx.info

    _add_search(api, ctx)
    _add_items(api, ctx)
    return api


def _add_search(api: APIRouter, ctx: ServeContext) -> None:
    settings = ctx.settings

    # One handler for plain, region and refined searches; /search/region is its older
    # name, kept for the clients that use it.
    @api.post("/search")
    @api.post(
        "/search/region",
        summary="Search by region or with feedback (same form as POST /api/search)",
    )
    def api_search(
        file: Annotated[
            UploadFile, File(description="query image: PNG, JPEG, TIFF, DICOM or NIfTI")
        ],
        k: Annotated[int, Form(ge=1, description="number of hits")] = 10,
        where: Annotated[
            list[str] | None,
            Form(description="metadata filters COLUMN=VALUE (VALUE may be A,B); repeatable"),
        ] = None,
        one_per_patient: Annotated[bool, Form(description="at most one hit per patient")] = False,
        suggest: Annotated[
            str, Form(description="metadata column for the majority vote")
        ] = "label",
        slice: Annotated[
            int | None,
            Form(
                ge=0, description="NIfTI slice / DICOM frame (default: middle slice / first frame)"
            ),
        ] = None,
        preview: Annotated[
            bool, Form(description="also return the query as a PNG data URL")
        ] = False,
        roi: Annotated[
            str | None,
            Form(description="region query: X0,Y0,X1,Y1 in query pixels (x1/y1 exclusive)"),
        ] = None,
        relevant: Annotated[
            list[str] | None, Form(description="ids marked relevant (comma-separated; repeatable)")
        ] = None,
        irrelevant: Annotated[
            list[str] | None, Form(description="ids marked not relevant (comma-separated)")
        ] = None,
    ) -> dict:
        from radsearch.io.sources import parse_where
        from radsearch.io.upload import display_name

        if k > settings.max_k:
            raise HTTPException(422, f"k={k} is above the limit {settings.max_k}")
        where_map = parse_where(where) or None
        ctx.refuse_phi([*(where_map or {}), suggest])
        name = display_name(file.filename)
        pixels = ctx.read_query(file, slice)
        marked = region_options(ctx, pixels, roi, relevant, irrelevant)
        common = {"k": k, "where": where_map, "one_per_patient": one_per_patient}
        common["suggest"] = suggest or None
        t0 = time.perf_counter()
        if marked:  # region grids / feedback: beside the batcher, under the encoder lock
            out = search_marked(ctx, pixels, name, marked, **common)
        else:
            out = ctx.batcher.search(pixels, name, **common).to_dict()
        out["hits"] = [ctx.public(h) for h in out["hits"]]
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out["query_size"] = [int(pixels.shape[1]), int(pixels.shape[0])]
        if preview:
            png = encode_png(pixels, 384)
            out["query_image"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return out


def _add_items(api: APIRouter, ctx: ServeContext) -> None:
    @api.get("/items/{item_id:anypath}/image", responses={200: {"content": {"image/png": {}}}})
    def item_image(item_id: str, size: Annotated[int | None, Query(ge=16, le=2048)] = None):
        from radsearch.io.items import load_pixels

        row = ctx.row_or_404(item_id)
        png = ctx.thumbs.get((row, size))
        if png is None:
            ref = ctx.item_ref(row)
            try:
                pixels = load_pixels(ref)
            except ImageReadError as exc:
                reason = exc.reason.replace(ref.source, "its file")
                raise HTTPException(
                    404, f"image of this item is not available ({reason})"
                ) from None
            png = encode_png(pixels, size)
            ctx.thumbs.put((row, size), png)
        return Response(
            png, media_type="image/png", headers={"cache-control": "private, max-age=3600"}
        )

    @api.get("/items/{item_id:anypath}")
    def item(item_id: str) -> dict:
        return ctx.public(ctx.index.rows([ctx.row_or_404(item_id)])[0])
