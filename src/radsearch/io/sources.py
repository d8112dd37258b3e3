"""Enumerate a source (folder, CSV manifest or single file) as ``ItemRef``s.

Nothing here decodes pixels: DICOM and NIfTI headers are read only to expand frames and
slices and to attach searchable metadata, so enumeration stays fast and decoding can
happen later in worker processes. Order is deterministic (sorted paths for folders,
row order for manifests) so that re-running an index gives the same ids in the same
order.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from radsearch.errors import ImageReadError, SourceError
from radsearch.io.dicom import METADATA_KEYS
from radsearch.io.items import ItemRef, file_kind, has_dicm_magic, kind_by_name, text_id

# Accepted names of a manifest's path column, in order of preference.
PATH_COLUMNS = ("filepath", "path", "image_path")
# Direct patient identifiers read from DICOM headers but never put into item metadata
# (it ends up in index files and web pages); patient_id stays for per-patient grouping.
PRIVATE_KEYS = ("patient_name", "patient_birth_date")
# DICOM header keys a ``where`` filter may use even when a CSV lacks the column.
DICOM_FILTER_KEYS = (*(k for k in METADATA_KEYS if k not in PRIVATE_KEYS), "number_of_frames")
_ONE_HOT_VALUES = frozenset({"0", "1", "0.0", "1.0"})


def parse_where(filters: Iterable[str] | None) -> dict[str, str]:
    """``["modality=CT", "anatomy=chest,abdomen"]`` -> dict; a repeated column adds alternatives."""
    out: dict[str, str] = {}
    for text in filters or ():
        key, sep, value = str(text).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SourceError(f"bad filter {text!r}: expected COLUMN=VALUE")
        value = value.strip()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def alternatives(value) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(v.strip() for v in value.split(","))
    if isinstance(value, Iterable):
        return frozenset(str(v).strip() for v in value)
    return frozenset({str(value)})


def matches(meta: Mapping[str, str], where: Mapping[str, frozenset], *, partial: bool) -> bool:
    """Whether ``meta`` passes every filter; ``partial`` skips keys ``meta`` lacks."""
    for key, allowed in where.items():
        if key not in meta:
            if partial:
                continue
            return False
        if str(meta[key]).strip() not in allowed:
            return False
    return True


def _is_special(path: Path) -> bool:
    """Not a regular file (or a link to nothing): such entries are never opened."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True


def _folder_entries(folder: Path, label_from_folder: bool) -> list[tuple[str, Path, dict, str]]:
    """(id, path, metadata, kind) for every image under ``folder``, sorted by id.

    Files with unknown extensions are kept only when they carry the DICM magic: DICOM
    exports often name files by UID (``1.2.840...``) or with no extension at all.
    FIFOs, sockets, devices and broken links are kept too, unopened, so that they are
    reported rather than silently left out.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            kind = kind_by_name(name)
            if kind is None:
                if name.upper() == "DICOMDIR":
                    continue
                if has_dicm_magic(full):
                    kind = "dicom"
                elif _is_special(full):
                    kind = "raster"  # never opened: decoding reports it
                else:
                    continue
            rel = full.relative_to(folder)
            meta = {}
            if label_from_folder:
                meta["label"] = rel.parent.name if rel.parent != Path(".") else ""
            found.append((text_id(rel.as_posix()), full, meta, kind))
    found.sort(key=lambda entry: entry[0])
    return found


def _find_path_column(csv_path: Path, columns: list[str]) -> str:
    for wanted in PATH_COLUMNS:
        for col in columns:
            if col.strip().lower() == wanted:
                return col
    raise SourceError(
        f"{csv_path}: no 'filepath' column (also accepted: {', '.join(PATH_COLUMNS[1:])}); "
        f"columns: {', '.join(columns) if columns else '(none)'}"
    )


def _one_hot_columns(columns: list[str], rows: list[dict]) -> list[str]:
    """Columns whose every value is 0/1: the reference paper's one-hot label encoding."""
    if not rows:
        return []
    return [
        col
        for col in columns
        if all((row.get(col) or "").strip() in _ONE_HOT_VALUES for row in rows)
    ]


def _csv_entries(
    csv_path: Path, root: str | os.PathLike | None, split: str | None
) -> tuple[list[tuple[str, Path, dict, str | None]], set[str]]:
    """Rows of a manifest as (id, path, metadata, kind=None), in file order, and its columns."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c for c in (reader.fieldnames or []) if c is not None]
            path_col = _find_path_column(csv_path, columns)
            rows = [
                {k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{csv_path}: cannot read CSV ({exc})") from None

    meta_cols = [c for c in columns if c != path_col]
    if split is not None and "split" not in columns:
        raise SourceError(
            f"{csv_path}: split={split!r} needs a 'split' column; columns: {', '.join(columns)}"
        )
    one_hot = (
        [] if "label" in columns else _one_hot_columns([c for c in meta_cols if c != "split"], rows)
    )
    if len(one_hot) < 2:
        one_hot = []

    # Absolute, so an index's ``source`` column works from any working directory.
    base = (Path(root) if root is not None else csv_path.parent).resolve()
    allowed_splits = alternatives(split) if split is not None else None
    seen: dict[str, int] = {}
    entries = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        item_id = row.get(path_col, "")
        if not item_id:
            raise SourceError(f"{csv_path}: line {line}: empty '{path_col}'")
        if item_id in seen:
            raise SourceError(
                f"{csv_path}: duplicate {path_col} {item_id!r} (lines {seen[item_id]} and {line})"
            )
        seen[item_id] = line
        if allowed_splits is not None and row.get("split", "") not in allowed_splits:
            continue
        meta = {c: row.get(c, "") for c in meta_cols}
        if one_hot:
            meta["label"] = "|".join(c for c in one_hot if row[c] in ("1", "1.0"))
        path = Path(item_id)
        if not path.is_absolute():
            path = base / path
        entries.append((text_id(item_id), path, meta, None))
    all_cols = set(meta_cols) | ({"label"} if one_hot else set())
    return entries, all_cols


def _slice_indices(count: int, step: int, bounds) -> range:
    start, stop = (None, None) if bounds is None else bounds
    return range(count)[slice(start, stop, step)]


def _expand(
    item_id: str,
    path: Path,
    meta: dict,
    kind: str,
    *,
    where: dict,
    from_folder: bool,
    nifti_step: int,
    nifti_range,
    nifti_window,
) -> Iterator[ItemRef]:
    """One entry -> its ItemRefs (frames / slices), with DICOM header metadata merged."""
    source = str(path)
    if not matches(meta, where, partial=True):  # cheap reject before reading headers
        return
    if kind == "dicom":
        from radsearch.io.dicom import check_frame_count, metadata_from_header, read_dicom_header

        try:
            ds = read_dicom_header(path)
        except ImageReadError:
            ds = None  # keep the item: decoding will report the reason per item
        if ds is not None:
            if from_folder and "Rows" not in ds and "SOPClassUID" in ds:
                return  # structured report, key object...: a DICOM object, not an image
            header = metadata_from_header(ds)
            merged = {k: str(v) for k, v in header.items() if k not in PRIVATE_KEYS}
            merged.update(meta)  # manifest columns win over the header
            if not matches(merged, where, partial=False):
                return
            try:
                frames = check_frame_count(ds, path)
            except ImageReadError:
                frames = 1  # one item: decoding reports the impossible frame count
            if frames > 1:
                for n in range(frames):
                    yield ItemRef(f"{item_id}#frame={n}", source, n, dict(merged), kind=kind)
            else:
                yield ItemRef(item_id, source, None, merged, kind=kind)
            return
    elif kind == "nifti":
        from radsearch.io.nifti import nifti_slice_count

        if not matches(meta, where, partial=False):
            return
        try:
            count = nifti_slice_count(path)
        except ImageReadError:
            count = None
        if count is not None:
            for n in _slice_indices(count, nifti_step, nifti_range):
                yield ItemRef(f"{item_id}#slice={n}", source, n, dict(meta), nifti_window, kind)
            return
    if matches(meta, where, partial=False):
        yield ItemRef(item_id, source, None, meta, kind=kind)


def iter_source(
    spec: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    split: str | None = None,
    where: Mapping | None = None,
    label_from_folder: bool = False,
    nifti_step: int = 1,
    nifti_range: tuple[int | None, int | None] | None = None,
    nifti_window: tuple[float, float] | str | None = None,
) -> Iterator[ItemRef]:
    """Items of a folder, CSV manifest or single file, without decoding pixels.

    The source is validated (existence, CSV columns, duplicates, filter keys) when this
    is called, so mistakes surface before any work starts; items are yielded lazily.
    ``split`` and ``where`` values may list alternatives separated by commas.
    """
    if str(spec).startswith("dicomweb:"):  # a PACS: see radsearch.io.dicomweb
        from radsearch.io.dicomweb import iter_dicomweb

        return iter_dicomweb(str(spec), where=where)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder")
    path = path.resolve()
    if nifti_step < 1:
        raise SourceError(f"nifti_step must be >= 1, got {nifti_step}")
    if isinstance(nifti_window, str):
        from radsearch.io.nifti import parse_window

        nifti_window = parse_window(nifti_window)
    elif nifti_window is not None:
        nifti_window = (float(nifti_window[0]), float(nifti_window[1]))
    filters = {str(k): alternatives(v) for k, v in (where or {}).items()}

    if path.is_dir():
        if split is not None:
            raise SourceError(f"{spec}: split={split!r} needs a CSV manifest with a 'split' column")
        entries = _folder_entries(path, label_from_folder)
        columns = {"label"} if label_from_folder else set()
        from_folder = True
    elif path.suffix.lower() == ".csv":
        entries, columns = _csv_entries(path, root, split)
        from_folder = False
    else:
        if split is not None:
            raise SourceError(f"{spec}: split={split!r} needs a CSV manifest with a 'split' column")
        entries = [(text_id(path.name), path, {}, None)]
        columns = set()
        from_folder = False

    unknown = [k for k in filters if k not in columns and k not in DICOM_FILTER_KEYS]
    if unknown:
        have = ", ".join(sorted(columns | set(DICOM_FILTER_KEYS)))
        raise SourceError(f"{spec}: cannot filter on {unknown[0]!r}; available: {have}")

    def generate() -> Iterator[ItemRef]:
        for item_id, item_path, meta, kind in entries:
            if kind is None:  # a missing file is "raster": loading reports it per item
                kind = file_kind(item_path)
            yield from _expand(
                item_id,
                item_path,
                meta,
                kind,
                where=filters,
                from_folder=from_folder,
                nifti_step=nifti_step,
                nifti_range=nifti_range,
                nifti_window=nifti_window,
            )

    return generate()
