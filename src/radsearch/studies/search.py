"""Study in, studies out; and single-image hits grouped by study.

A query study (a DICOM folder or series, a NIfTI volume, several image files, or an
indexed study by id) is embedded item by item with the index's encoder; every indexed
study that survives the filters is scored with ``aggregate.score_studies`` against it.
Up to ``EXACT_LIMIT`` allowed rows every study is scored exactly; above that the
candidates are the studies of each query item's nearest rows (``search.knn_rows``,
the recipe's query side included), scored exactly. The best-matching item pairs
explain each study's score.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radsearch.errors import ImageReadError, RadsearchError
from radsearch.search import PATIENT_COLUMN, QueryResult, filter_rows, knn_rows, majority_vote
from radsearch.studies.aggregate import (
    DEFAULT_METHOD,
    check_method,
    needs_means,
    score_studies,
    study_means,
)
from radsearch.studies.identity import STUDY_COLUMN, study_table

# Above this many allowed rows, only the studies of each query item's neighbours are scored.
EXACT_LIMIT = 50_000
# Per-item DICOM keys that say nothing about a study as a whole.
PER_ITEM_KEYS = (
    "id",
    "source",
    STUDY_COLUMN,
    "sop_uid",
    "instance_number",
    "slice_location",
    "image_position",
)


@dataclass
class StudyHit:
    rank: int
    score: float
    study_id: str
    items: int
    pairs: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "rank": self.rank,
            "score": round(float(self.score), 6),
            "study_id": self.study_id,
            "items": self.items,
            "pairs": self.pairs,
        }
        d.update(self.metadata)
        return d


@dataclass
class StudyResult:
    query: str
    studies: list[StudyHit]
    skipped: list[dict] = field(default_factory=list)  # unreadable query files: source, reason
    suggestion: dict | None = None

    def to_dict(self) -> dict:
        return {"query": self.query, "studies": [s.to_dict() for s in self.studies]}


def read_study(paths) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """Query paths (folders, series, volumes, images) -> (item names, images, failures).

    Unreadable files are returned as failures and the rest is kept; a query with no
    image at all is an error.
    """
    from radsearch.io.items import load_pixels
    from radsearch.io.sources import iter_source

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    refs = []
    for p in paths:
        found = list(iter_source(p))
        refs += found if Path(p).is_file() else [_named(r, p) for r in found]
    if not refs:
        raise RadsearchError(
            f"{', '.join(map(str, paths)) or '(nothing)'}: the query study has no images"
        )
    names, images, failures = [], [], []
    for r in refs:
        try:
            images.append(load_pixels(r))
            names.append(r.id)
        except ImageReadError as exc:
            failures.append({"source": r.source, "reason": exc.reason})
    if not images:
        first = failures[0]
        raise RadsearchError(
            f"none of the {len(failures)} query item(s) could be read "
            f"(first: {first['source']}: {first['reason']})"
        )
    return names, images, failures


def _named(ref, folder):
    from dataclasses import replace

    return replace(ref, id=f"{Path(folder).name}/{ref.id}")


def embed_study(index, queries) -> tuple[list[str], np.ndarray, list[dict]]:
    """A query study as (item names, pre-recipe vectors, unreadable files)."""
    if isinstance(queries, np.ndarray) and queries.ndim == 2 and queries.dtype.kind == "f":
        if queries.shape[1] != index.dim:
            raise RadsearchError(
                f"query vectors have dim {queries.shape[1]}, index has {index.dim}"
            )
        return [f"vector[{i}]" for i in range(len(queries))], queries.astype(np.float32), []
    items = [queries] if isinstance(queries, (str, Path)) else list(queries)
    if not items:
        raise RadsearchError("the query study has no images")
    if all(isinstance(q, (str, Path)) for q in items):
        names, images, failures = read_study(items)
    else:
        names, images, failures = [f"image[{i}]" for i in range(len(items))], items, []
    encoder = index.encoder()
    recipe = index.recipe
    if recipe is not None and hasattr(recipe, "encode_queries"):
        return names, recipe.encode_queries(encoder, images), failures
    return names, encoder.encode_images(images), failures


_DB: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def search_space(index, qvecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, all database vectors) in the space the vector store searches."""
    recipe = index.recipe
    q = np.asarray(qvecs, np.float32)
    if recipe is None:
        return q, np.asarray(index.embeddings, np.float32)
    key = (index.count, id(index.embeddings), id(recipe))
    cached = _DB.get(index)
    if cached is None or cached[0] != key:
        cached = (key, np.asarray(index.db_vectors(np.asarray(index.embeddings)), np.float32))
        _DB[index] = cached
    return recipe.transform_query(q, index), cached[1]


_MEANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def all_means(index, table, db) -> np.ndarray:
    """Every study's normalised mean vector in the search space, built once per index state."""
    key = (index.count, id(index.embeddings), id(index.recipe))
    cached = _MEANS.get(index)
    if cached is None or cached[0] != key:
        cached = (key, study_means(np.asarray(db)[table.order], table.starts))
        _MEANS[index] = cached
    return cached[1]


def _candidates(index, table, qvecs, k, allowed_rows) -> np.ndarray:
    pool = index.count if allowed_rows is None else len(allowed_rows)
    if pool <= EXACT_LIMIT:
        if allowed_rows is None:
            return np.arange(len(table))
        return np.unique(table.of_row[allowed_rows])
    _, rows = knn_rows(index, qvecs, min(pool, max(100, 10 * k)), rows_allowed=allowed_rows)
    return np.unique(table.of_row[rows[rows >= 0]])


def search_study(
    index,
    queries,
    k: int = 10,
    *,
    where: dict | None = None,
    one_per_patient: bool = False,
    suggest: str | None = "label",
    method: str = DEFAULT_METHOD,
    pairs: int = 3,
    name: str | None = None,
    names: list[str] | None = None,
    exclude: str | None = None,
) -> StudyResult:
    """The ``k`` indexed studies most similar to a query study (see module docstring).

    ``queries``: paths (folders, DICOM series, NIfTI volumes, images), images or an
    ``NxD`` vector array; ``exclude``: a study id never returned (the query itself).
    """
    if k < 1:
        raise RadsearchError(f"k must be at least 1 (got {k})")
    check_method(method)
    item_names, qvecs, skipped = embed_study(index, queries)
    names = list(names) if names else item_names
    result = rank_studies(
        index,
        qvecs,
        k,
        names=names,
        where=where,
        one_per_patient=one_per_patient,
        method=method,
        pairs=pairs,
        exclude=exclude,
    )
    result.query = name or _query_name(queries)
    result.skipped = skipped
    if suggest and suggest in index.items.column_names:
        result.suggestion = majority_vote(result.studies, suggest)
    return result


def search_study_id(index, study_id: str, k: int = 10, **options) -> StudyResult:
    """Studies most similar to an indexed study (which is itself left out)."""
    table = study_table(index)
    rows = table.rows(table.find(study_id))
    names = index.items.column("id").take(rows).to_pylist()
    vecs = np.asarray(index.embeddings[rows], np.float32)
    return search_study(
        index, vecs, k, name=f"study:{study_id}", names=names, exclude=study_id, **options
    )


def _query_name(queries) -> str:
    if isinstance(queries, (str, Path)):
        return str(queries)
    if isinstance(queries, (list, tuple)) and queries and isinstance(queries[0], (str, Path)):
        return ", ".join(map(str, queries))
    return f"study[{len(queries)} items]"


def rank_studies(
    index,
    qvecs,
    k,
    *,
    names,
    where=None,
    one_per_patient=False,
    method=DEFAULT_METHOD,
    pairs=3,
    exclude=None,
) -> StudyResult:
    """Score the candidate studies for already-embedded query items; build the hits."""
    if index.count == 0:
        raise RadsearchError(f"{index.path}: the index is empty")
    table = study_table(index)
    allowed_rows = filter_rows(index, where)
    allowed = None
    if allowed_rows is not None:
        allowed = np.zeros(index.count, bool)
        allowed[allowed_rows] = True
    cands = _candidates(index, table, qvecs, k, allowed_rows)
    if exclude is not None:
        cands = cands[cands != table.find(exclude)]
    rows, starts, cands = table.gather(cands, allowed)
    if len(cands) == 0:
        what = f" matches {_where_text(where)}" if where else " is left"
        raise RadsearchError(f"no indexed study{what}")
    q, db = search_space(index, qvecs)
    # Cosines against the whole store then a column gather: cheaper than gathering vectors.
    sims = (q @ db.T)[:, rows] if len(rows) * 2 > len(db) else q @ db[rows].T
    means = None
    if needs_means(method):
        means = all_means(index, table, db)[cands] if allowed is None else None
        means = study_means(db[rows], starts) if means is None else means
    scores = score_studies(q, None, starts, method, sims=sims, means=means)
    ends = np.append(starts[1:], len(rows))
    hits, patients = [], set()
    for j in np.argsort(-scores, kind="stable"):
        srows = rows[starts[j] : ends[j]]
        meta = study_metadata(index, srows)
        pid = meta.get(PATIENT_COLUMN, "") if one_per_patient else ""
        if pid and pid in patients:
            continue
        patients.add(pid)
        pairs_found = best_pairs(index, sims[:, starts[j] : ends[j]], srows, names, pairs)
        hits.append(
            StudyHit(
                len(hits) + 1,
                float(scores[j]),
                table.names[cands[j]],
                len(srows),
                pairs_found,
                meta,
            )
        )
        if len(hits) == k:
            break
    return StudyResult("", hits)


def _where_text(where: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in where.items())


def best_pairs(index, sims, rows, names, n) -> list[dict]:
    """Each query item's best match in the study (``sims``: query items x its rows), the
    ``n`` strongest first."""
    if n <= 0:
        return []
    best = sims.argmax(axis=1)
    top = sims[np.arange(len(sims)), best]
    order = np.argsort(-top, kind="stable")[:n]
    ids = index.items.column("id").take(rows[best[order]]).to_pylist()
    return [
        {"query_item": names[i], "hit_id": hid, "score": round(float(top[i]), 6)}
        for i, hid in zip(order, ids, strict=True)
    ]


def study_metadata(index, rows) -> dict:
    """A study's metadata: each column's most frequent non-empty value over its items."""
    metas = index.rows(np.sort(rows))
    out = {}
    for col in index.items.column_names:
        if col in PER_ITEM_KEYS:
            continue
        values = Counter(m[col] for m in metas if m.get(col) not in ("", None))
        if values:
            out[col] = values.most_common(1)[0][0]
    return pacs_links(out)


def pacs_links(meta: dict) -> dict:
    """A PACS study's links point at the study, not at one of its instances:
    ``pacs_url`` becomes the DICOMweb study URL, ``viewer_url`` Orthanc's study page."""
    url, study = meta.get("pacs_url", ""), meta.get("study_uid", "")
    if url and study and f"/studies/{study}/" in url:
        meta["pacs_url"] = url.split(f"/studies/{study}/")[0] + f"/studies/{study}"
    viewer, patient = meta.get("viewer_url", ""), meta.get("patient_id", "")
    if viewer and study and "/app/explorer.html#" in viewer:
        from radsearch.io.dicomweb import orthanc_id

        base = viewer.split("/app/explorer.html#")[0]
        meta["viewer_url"] = f"{base}/app/explorer.html#study?uuid={orthanc_id(patient, study)}"
    return meta


def group_by_study(index, qvecs, k: int = 10, names=None, **options) -> list[QueryResult]:
    """Single-image search, each study once with its best item (``--group-by study``)."""
    from radsearch.search import search_vectors

    table = study_table(index)
    suggest = options.pop("suggest", "label")
    fetch = min(index.count, 4 * k)
    while True:
        results = search_vectors(index, qvecs, fetch, names=names, suggest=None, **options)
        grouped = [_first_per_study(r, table, index, k) for r in results]
        if fetch >= index.count or all(len(r.hits) == k for r in grouped):
            break
        fetch = min(index.count, fetch * 4)
    if suggest and suggest in index.items.column_names:
        for r in grouped:
            r.suggestion = majority_vote(r.hits, suggest)
    return grouped


def _first_per_study(result: QueryResult, table, index, k) -> QueryResult:
    seen, hits = set(), []
    for h in result.hits:
        s = table.of_row[index.row_of(h.id)]
        if s in seen:
            continue
        seen.add(s)
        h.rank = len(hits) + 1
        h.metadata[STUDY_COLUMN] = table.names[s]
        h.metadata["study_items"] = int(table.ends[s] - table.starts[s])
        hits.append(h)
        if len(hits) == k:
            break
    return QueryResult(result.query, hits)
