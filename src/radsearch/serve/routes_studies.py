"""``POST /api/search/study``: a query study in, studies out.

The study arrives as several files, a zip of a DICOM series (or of any images), or a
NIfTI volume (every axial slice) / multi-frame DICOM (every frame). Each file goes
through ``radsearch.io.upload`` like a single-image query (kind from io's detector,
pixel cap on the header, the decode memory budget), so a hostile study is no worse
than a hostile image; unreadable files are named under ``skipped`` and the rest is
searched. The studies are those of ``radsearch search --study --json``
(``radsearch.studies.search_study``), less the columns ``ServeContext.public`` hides.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from starlette.exceptions import HTTPException

from radsearch.errors import ImageReadError, RadsearchError
from radsearch.serve.context import ServeContext

# Most items one query study may bring (a longer volume is sampled evenly).
MAX_STUDY_ITEMS = 256
MAX_ZIP_MEMBERS = 4096
# One study search at a time: a study is up to MAX_STUDY_ITEMS encoder inputs at once.
# (Single-image queries go through the batcher's own thread; encoders and the store
# may be called from two threads.)
_STUDY_LOCK = threading.Lock()


def router(ctx: ServeContext) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["api"])
    settings = ctx.settings

    @api.post("/search/study")
    def api_search_study(
        files: Annotated[
            list[UploadFile],
            File(description="the query study: image files, a zip of a DICOM series, or a NIfTI"),
        ],
        k: Annotated[int, Form(ge=1, description="number of studies")] = 10,
        where: Annotated[
            list[str] | None,
            Form(description="metadata filters COLUMN=VALUE (VALUE may be A,B); repeatable"),
        ] = None,
        one_per_patient: Annotated[bool, Form(description="at most one study per patient")] = False,
        suggest: Annotated[str, Form(description="column for the majority vote")] = "label",
    ) -> dict:
        from radsearch.io.sources import parse_where
        from radsearch.studies.search import search_study

        if k > settings.max_k:
            raise HTTPException(422, f"k={k} is above the limit {settings.max_k}")
        where_map = parse_where(where) or None
        ctx.refuse_phi([*(where_map or {}), suggest])
        names, images, skipped = read_study_uploads(ctx, files)
        if not images:
            why = f" ({skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""
            raise HTTPException(422, f"the query study has no readable image{why}")
        t0 = time.perf_counter()
        with _STUDY_LOCK:
            result = search_study(
                ctx.index,
                images,
                k=k,
                where=where_map,
                one_per_patient=one_per_patient,
                suggest=suggest or None,
                names=names,
                name=_study_name(files),
            )
        out = result.to_dict()
        out["studies"] = [ctx.public(s) for s in out["studies"]]
        out["suggestion"] = result.suggestion
        out["skipped"] = skipped
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return out

    @api.get("/studies/{study_id:anypath}/items")
    def study_items(study_id: str) -> dict:
        """A study's item ids in reading order (instance number, then slice, then row)."""
        from radsearch.studies.identity import study_table

        table = study_table(ctx.index)
        try:
            rows = table.rows(table.find(study_id))
        except RadsearchError:
            raise HTTPException(404, "no such study in the index") from None
        metas = ctx.index.rows(rows)
        order = sorted(
            range(len(rows)),
            key=lambda i: (
                _number(metas[i].get("instance_number")),
                _number(_slice(metas[i]["id"])),
                i,
            ),
        )
        return {"study_id": study_id, "items": [metas[i]["id"] for i in order]}

    return api


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


def _slice(item_id: str) -> str:
    return item_id.rpartition("=")[2] if "#slice=" in item_id or "#frame=" in item_id else ""


def _study_name(files) -> str:
    from radsearch.io.upload import display_name

    shown = [display_name(f.filename) for f in files[:3]]
    return ", ".join(shown) + (f" (+{len(files) - 3})" if len(files) > 3 else "")


def read_study_uploads(ctx: ServeContext, files) -> tuple[list[str], list, list[dict]]:
    """(item names, decoded images, skipped files) of the uploaded study, in name order."""
    from radsearch.io.upload import display_name

    members: list[tuple[str, bytes]] = []
    budget = ctx.settings.max_upload_bytes
    for upload in files:
        data = upload.file.read(budget + 1)
        if len(data) > budget:
            raise HTTPException(413, f"upload too large: more than {budget} bytes")
        name = display_name(upload.filename)
        members += (
            _unzip(name, data, budget) if zipfile.is_zipfile(io.BytesIO(data)) else [(name, data)]
        )
    members.sort(key=lambda m: m[0])
    names, images, skipped = [], [], []
    for name, data in members:
        try:
            for label, pixels in _decode_all(ctx, name, data):
                names.append(label)
                images.append(pixels)
        except ImageReadError as exc:
            skipped.append({"file": name, "reason": exc.reason})
        if len(images) >= MAX_STUDY_ITEMS:
            break
    return names[:MAX_STUDY_ITEMS], images[:MAX_STUDY_ITEMS], skipped


def _unzip(name: str, data: bytes, budget: int) -> list[tuple[str, bytes]]:
    """A zip's regular files (no directories, no hidden files), within the byte budget."""
    from radsearch.io.upload import display_name

    out, total = [], 0
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > MAX_ZIP_MEMBERS:
            raise HTTPException(413, f"{name}: more than {MAX_ZIP_MEMBERS} files in the zip")
        for info in infos:
            base = display_name(info.filename)
            if base.startswith(".") or base.upper() == "DICOMDIR":
                continue
            total += info.file_size
            if total > 4 * budget:  # a zip bomb: refuse before inflating it
                raise HTTPException(413, f"{name}: the zip holds more than {4 * budget} bytes")
            out.append((f"{name}/{info.filename}", zf.read(info)))
    return out


def _decode_all(ctx: ServeContext, name: str, data: bytes):
    """(item name, pixels) of every frame or slice of one file (evenly sampled if long)."""
    from radsearch.io.upload import read_upload

    count = _frame_count(name, data)
    step = max(1, -(-count // MAX_STUDY_ITEMS))
    for frame in range(0, count, step):
        pixels = read_upload(
            io.BytesIO(data),
            name,
            frame=frame if count > 1 else None,
            max_pixels=ctx.settings.max_pixels,
            budget=ctx.budget,
        )
        yield (f"{name}#{frame}" if count > 1 else name), pixels


def _frame_count(name: str, data: bytes) -> int:
    """Frames (DICOM) or axial slices (NIfTI) of an upload; 1 for anything else."""
    import os
    import tempfile

    from radsearch.io.items import file_kind
    from radsearch.io.upload import client_suffix

    with tempfile.TemporaryDirectory(prefix="radsearch-study-") as folder:
        path = os.path.join(folder, "item" + client_suffix(name))
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            kind = file_kind(path)
            if kind == "nifti":
                from radsearch.io.nifti import nifti_slice_count

                return nifti_slice_count(path)
            if kind == "dicom":
                from radsearch.io.dicom import dicom_frame_count

                return dicom_frame_count(path)
        except ImageReadError as exc:
            raise ImageReadError(name, exc.reason.replace(path, "upload")) from None
    return 1
