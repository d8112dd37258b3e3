"""Region routes: ``POST /api/search/region`` (an ROI and/or relevance feedback) and
``POST /api/explain`` (why-similar maps as JSON or a PNG overlay); see docs/regions.md.

Both take the query upload like ``POST /api/search`` and go through the same
``Index.search`` / ``radsearch.regions`` code as the CLI. A bad ROI, an unknown id or an
index without region features is a 400 with the CLI's one-line message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from radsearch.serve.context import ServeContext


def _ids(values: list[str] | None) -> list[str]:
    return [i.strip() for v in values or [] for i in str(v).split(",") if i.strip()]


def router(ctx: ServeContext) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["regions"])
    settings = ctx.settings

    def read_query(upload: UploadFile) -> object:
        from radsearch.io.upload import read_upload

        return read_upload(
            upload.file, upload.filename, max_pixels=settings.max_pixels, budget=ctx.budget
        )

    @api.post("/search/region")
    def api_search_region(
        file: Annotated[UploadFile, File(description="query image")],
        roi: Annotated[str | None, Form(description="X0,Y0,X1,Y1 in query pixels")] = None,
        relevant: Annotated[list[str] | None, Form(description="ids marked relevant")] = None,
        irrelevant: Annotated[list[str] | None, Form(description="ids marked wrong")] = None,
        k: Annotated[int, Form(ge=1)] = 10,
        where: Annotated[list[str] | None, Form(description="COLUMN=VALUE filters")] = None,
        one_per_patient: Annotated[bool, Form()] = False,
        suggest: Annotated[str, Form()] = "label",
    ) -> dict:
        from radsearch.io.sources import parse_where
        from radsearch.io.upload import display_name
        from radsearch.regions.geometry import parse_box

        if k > settings.max_k:
            raise HTTPException(422, f"k={k} is above the limit {settings.max_k}")
        where_map = parse_where(where) or None
        ctx.refuse_phi([*(where_map or {}), suggest])
        options = {"roi": parse_box(roi) if roi else None}
        options.update(relevant=_ids(relevant), irrelevant=_ids(irrelevant))
        if options["roi"] is None and not (options["relevant"] or options["irrelevant"]):
            raise HTTPException(422, "give roi and/or relevant/irrelevant ids")
        pixels = read_query(file)
        with ctx.search_lock:
            result = ctx.index.search(
                pixels,
                k=k,
                where=where_map,
                one_per_patient=one_per_patient,
                suggest=suggest or None,
                names=[display_name(file.filename)],
                **options,
            )[0]
        out = result.to_dict()
        out["hits"] = [ctx.public(h) for h in out["hits"]]
        return out

    @api.post("/explain")
    def api_explain(
        file: Annotated[UploadFile, File(description="query image")],
        hit_id: Annotated[str, Form(description="id of the hit to explain")],
        roi: Annotated[str | None, Form(description="X0,Y0,X1,Y1 in query pixels")] = None,
        format: Annotated[str, Form(pattern="^(json|png)$")] = "json",
    ):
        from radsearch.regions.explain import explain
        from radsearch.regions.geometry import parse_box

        ctx.row_or_404(hit_id)
        pixels = read_query(file)
        with ctx.search_lock:
            maps, png = explain(ctx.index, pixels, hit_id, parse_box(roi) if roi else None)
        return Response(png, media_type="image/png") if format == "png" else maps

    return api
