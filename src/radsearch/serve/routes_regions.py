"""Region queries, relevance feedback and why-similar maps over HTTP (docs/regions.md).

``POST /api/search`` (and its older name ``/api/search/region``, one handler in
``routes_api``) takes ``roi``, ``relevant`` and ``irrelevant``: ``region_options``
checks them against the decoded query and the index, ``search_marked`` answers through
``Index.search``, the CLI's code, beside the batcher (a region query embeds the query's
feature grid too), under the encoder lock. ``POST /api/explain`` gives the why-similar
maps as JSON or a PNG overlay. A bad ROI, or one on an index without region features,
is a 422 and an unknown id a 404, each with a one-line message naming no server path.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from radsearch.errors import RadsearchError
from radsearch.serve.context import ServeContext

NO_REGIONS = (
    "roi: this index has no region features (rebuild it with region features on: "
    "radsearch index without --no-regions, with an encoder that has a spatial output)"
)


def _ids(index, values: list[str] | None) -> list[str]:
    """Marked ids: each value is one id when the index holds it whole (ids may contain
    commas), else a comma-separated list of them."""
    out = []
    for v in values or []:
        v = str(v)
        out += [v] if index.row_of(v) is not None else [i.strip() for i in v.split(",")]
    return [i for i in out if i]


def region_store(ctx: ServeContext):
    """The index's region store, or 422 (the CLI's message, less the index's path)."""
    from radsearch.regions.features import require

    try:
        return require(ctx.index)
    except RadsearchError:
        raise HTTPException(422, NO_REGIONS) from None


def checked_roi(ctx: ServeContext, pixels: np.ndarray, roi: str | None):
    """``roi`` ("X0,Y0,X1,Y1") as a box inside the decoded query, None when not given."""
    from radsearch.regions.geometry import check_box

    if roi is None or not roi.strip():
        return None
    region_store(ctx)
    try:
        return check_box(roi, pixels.shape[1], pixels.shape[0], "roi")
    except RadsearchError as exc:
        raise HTTPException(422, str(exc)) from None


def region_options(ctx: ServeContext, pixels, roi, relevant, irrelevant) -> dict:
    """The search form's ``roi`` / ``relevant`` / ``irrelevant``, checked: {} when none."""
    options = {}
    box = checked_roi(ctx, pixels, roi)
    if box is not None:
        options["roi"] = box
    for what, values in (("relevant", relevant), ("irrelevant", irrelevant)):
        ids = _ids(ctx.index, values)
        for item_id in ids:
            if ctx.index.row_of(item_id) is None:
                raise HTTPException(404, f"{what} id {item_id!r}: not in the index")
        if ids:
            options[what] = ids
    return options


def search_marked(ctx: ServeContext, pixels, name: str, marked: dict, **common) -> dict:
    """A region and/or feedback search's answer; hits of a region search carry
    ``match_box`` and ``image_size`` (the hit image's width and height: the box's frame)."""
    with ctx.search_lock:
        result = ctx.index.search(pixels, names=[name], **common, **marked)[0]
    out = result.to_dict()
    if "roi" in marked:
        sizes = region_store(ctx).sizes
        for hit in out["hits"]:
            hit["image_size"] = [int(v) for v in sizes[ctx.index.row_of(hit["id"])]]
    return out


def router(ctx: ServeContext) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["regions"])

    @api.post("/explain")
    def api_explain(
        file: Annotated[UploadFile, File(description="query image")],
        hit_id: Annotated[str, Form(description="id of the hit to explain")],
        roi: Annotated[str | None, Form(description="X0,Y0,X1,Y1 in query pixels")] = None,
        format: Annotated[str, Form(pattern="^(json|png)$")] = "json",
        slice: Annotated[int | None, Form(ge=0, description="NIfTI slice / DICOM frame")] = None,
    ):
        from radsearch.regions.explain import explain

        ctx.row_or_404(hit_id)
        pixels = ctx.read_query(file, slice)
        region_store(ctx)
        box = checked_roi(ctx, pixels, roi)
        with ctx.search_lock:
            maps, png = explain(ctx.index, pixels, hit_id, box)
        return Response(png, media_type="image/png") if format == "png" else maps

    return api
