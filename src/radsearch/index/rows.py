"""What an index row remembers about how it was read, and how rows get their ids.

``items.parquet`` holds, beside ``id``, ``source`` and the metadata columns, the columns
``ItemRef`` needs to decode the row again exactly as at indexing: ``_frame`` (DICOM
frame / NIfTI slice), ``_window_low`` / ``_window_high`` (NIfTI intensity window),
``_kind`` (dicom, nifti, raster) and ``_source_bytes`` (the file name's bytes, only
when they are not valid UTF-8). They are split off ``Index.items`` on open, so the
metadata table that search, filters and responses see is unchanged. Indexes written
before these columns existed still open: the frame is parsed back from the id.

An image's identity is its ``(source, frame)``: an item is already present when that
pair is, whatever its id. Ids stay unique in an index: a new image whose id is taken
by another image gets the shortest trailing part of its own path that is free
(``siteB/001.jpg``), so two folders with the same relative names keep both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from radsearch.io.items import ItemRef, text_id

READ_COLUMNS = ("_frame", "_window_low", "_window_high", "_kind", "_source_bytes")
_LEGACY_FRAME = re.compile(r"#(?:frame|slice)=(\d+)$")


def _types():
    import pyarrow as pa

    return {
        "_frame": pa.int64(),
        "_window_low": pa.float64(),
        "_window_high": pa.float64(),
        "_kind": pa.string(),
        "_source_bytes": pa.binary(),
    }


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8 (undecodable file-name bytes become U+FFFD), for display."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "replace")


def read_columns(refs: Sequence[ItemRef]):
    """The ``READ_COLUMNS`` table of ``refs``, row-aligned."""
    import pyarrow as pa

    def raw(source: str):
        return None if safe_text(source) == source else os.fsencode(source)

    values = {
        "_frame": [r.frame for r in refs],
        "_window_low": [None if r.window is None else float(r.window[0]) for r in refs],
        "_window_high": [None if r.window is None else float(r.window[1]) for r in refs],
        "_kind": [r.kind for r in refs],
        "_source_bytes": [raw(r.source) for r in refs],
    }
    types = _types()
    return pa.table({k: pa.array(v, types[k]) for k, v in values.items()})


def split_table(table):
    """``items.parquet`` -> (metadata table, read columns); legacy tables get parsed frames."""
    import pyarrow as pa

    if "_frame" not in table.column_names:
        frames = []
        for item_id in table.column("id").to_pylist():
            m = _LEGACY_FRAME.search(item_id or "")
            frames.append(int(m.group(1)) if m else None)
        n, types = table.num_rows, _types()
        cols = {k: pa.nulls(n, types[k]) for k in READ_COLUMNS}
        cols["_frame"] = pa.array(frames, pa.int64())
        return table, pa.table(cols)
    present = [c for c in READ_COLUMNS if c in table.column_names]
    read = table.select(present)
    types = _types()
    for k in READ_COLUMNS:
        if k not in present:
            read = read.append_column(k, pa.nulls(table.num_rows, types[k]))
    return table.drop_columns(present), read.select(list(READ_COLUMNS))


def join_table(items, read):
    """The table written to ``items.parquet``: metadata then the read columns."""
    for name in READ_COLUMNS:
        items = items.append_column(name, read.column(name))
    return items


def make_refs(items, read, rows: Sequence[int]) -> list[ItemRef]:
    """``ItemRef``s of ``rows``, with their metadata, decodable as at indexing."""
    import numpy as np

    take = np.asarray(rows, dtype=np.int64)
    meta = items.take(take).to_pylist()
    how = read.take(take).to_pylist()
    out = []
    for m, r in zip(meta, how, strict=True):
        source = m.pop("source") or ""
        if r["_source_bytes"] is not None:
            source = os.fsdecode(r["_source_bytes"])
        window = None
        if r["_window_low"] is not None and r["_window_high"] is not None:
            window = (float(r["_window_low"]), float(r["_window_high"]))
        item_id = m.pop("id")
        metadata = {k: ("" if v is None else v) for k, v in m.items()}
        out.append(ItemRef(item_id, source, r["_frame"], metadata, window, r["_kind"]))
    return out


def identities(items, read) -> set[tuple[str, int | None]]:
    """``(source, frame)`` of every row: what makes two rows the same image."""
    sources = items.column("source").to_pylist()
    raw = read.column("_source_bytes").to_pylist()
    frames = read.column("_frame").to_pylist()
    return {
        (os.fsdecode(b) if b is not None else (s or ""), f)
        for s, b, f in zip(sources, raw, frames, strict=True)
    }


def _candidates(ref: ItemRef) -> Iterable[str]:
    """Ids to try for ``ref``: its own, then longer trailing parts of its path."""
    yield ref.id
    suffix = ref.id[ref.id.rfind("#") :] if ref.frame is not None and "#" in ref.id else ""
    parts = [text_id(p) for p in ref.source.replace("\\", "/").split("/") if p]
    for n in range(2, len(parts) + 1):
        yield "/".join(parts[-n:]) + suffix
    n = 2
    while True:
        yield f"{ref.id}~{n}"
        n += 1


def assign(refs: Sequence[ItemRef], taken: set[str], present: set) -> list[tuple[int, ItemRef]]:
    """(position, ref with its final id) of each ref not yet present, in input order.

    ``taken`` (ids) and ``present`` (identities) are updated in place.
    """
    from dataclasses import replace

    out = []
    for i, ref in enumerate(refs):
        key = (ref.source, ref.frame)
        if key in present:
            continue
        present.add(key)
        if safe_text(ref.id) != ref.id:
            ref = replace(ref, id=text_id(ref.id, escape=""))
        if ref.id in taken:
            new_id = next(c for c in _candidates(ref) if c not in taken)
            ref = replace(ref, id=new_id)
        taken.add(ref.id)
        out.append((i, ref))
    return out
