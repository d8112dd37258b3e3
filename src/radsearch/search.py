"""Query -> hits: embedding with the index's own encoder, metadata filters,
one-hit-per-patient, the recipe's query side and re-ranking, and a majority-vote
suggestion. The CLI, the Python API and the HTTP server all go through here, so they
return identical hits for the same query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radsearch.errors import RadsearchError

PATIENT_COLUMN = "patient_id"
DEFAULT_SUGGEST = "label"


@dataclass
class Hit:
    rank: int
    score: float
    id: str
    source: str
    metadata: dict = field(default_factory=dict)
    match_box: list[int] | None = None  # region queries: where in the hit it matched

    def to_dict(self) -> dict:
        d = {
            "rank": self.rank,
            "score": round(float(self.score), 6),
            "id": self.id,
            "source": self.source,
        }
        if self.match_box is not None:
            d["match_box"] = list(self.match_box)
        d.update(self.metadata)
        return d


@dataclass
class QueryResult:
    query: str
    hits: list[Hit]
    suggestion: dict | None = None

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "hits": [h.to_dict() for h in self.hits],
            "suggestion": self.suggestion,
        }


def majority_vote(hits: list[Hit], column: str) -> dict | None:
    """The :func:`radsearch.vote.vote` winner among the hits' non-empty ``column``
    values (a tie goes to the nearer); ``share`` is its fraction of the voting hits."""
    from radsearch.vote import vote

    values = [h.metadata.get(column, "") for h in hits]
    voting = [v for v in values if v not in ("", None)]
    if not voting:
        return None
    vocab = list(dict.fromkeys(voting))
    code = {v: i for i, v in enumerate(vocab)}
    labels = np.asarray([[code.get(v, -1) if v not in ("", None) else -1 for v in values]])
    value = vocab[int(vote(labels, len(vocab))[0])]
    votes = voting.count(value)
    return {
        "column": column,
        "value": value,
        "votes": votes,
        "share": round(votes / len(voting), 4),
    }


def filter_rows(index, where: dict | None) -> np.ndarray | None:
    """Row numbers whose metadata matches every ``column -> value`` (comma = any of)."""
    if not where:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    from radsearch.io.sources import alternatives

    mask = None
    for col, value in where.items():
        if col not in index.items.column_names:
            raise RadsearchError(
                f"filter column {col!r} is not in the index (columns: "
                f"{', '.join(index.items.column_names)})"
            )
        allowed = pa.array(sorted(alternatives(value)))
        m = pc.is_in(index.items.column(col), value_set=allowed)
        mask = m if mask is None else pc.and_(mask, m)
    rows = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
    return rows.astype(np.int64)


def embed_queries(index, queries) -> tuple[list[str], np.ndarray]:
    """Images (HxWx3 arrays), paths or an ``NxD`` float array -> (labels, vectors)."""
    if isinstance(queries, np.ndarray) and queries.ndim == 2 and queries.dtype.kind == "f":
        if queries.shape[1] != index.dim:
            raise RadsearchError(
                f"query vectors have dim {queries.shape[1]}, index has {index.dim}"
            )
        return [f"vector[{i}]" for i in range(len(queries))], queries.astype(np.float32)
    if isinstance(queries, (str, Path, np.ndarray)):
        queries = [queries]
    from radsearch.io.items import read_image

    names, images = [], []
    for i, q in enumerate(queries):
        if isinstance(q, (str, Path)):
            names.append(str(q))
            images.append(read_image(q))
        else:
            names.append(f"image[{i}]")
            images.append(np.asarray(q))
    if not images:
        return names, np.zeros((0, index.dim), np.float32)
    return names, encode_prepared(index, [prepare_query(index, im) for im in images])


def prepare_query(index, image: np.ndarray):
    """One query image (``HxWx3 uint8``) -> the encoder's preprocessed input.

    The CPU work before the forward pass (resize, normalisation), apart so the server's
    request threads can do it concurrently; :func:`encode_prepared` does the rest.
    """
    return index.encoder().preprocess(np.asarray(image))


def encode_prepared(index, prepared: list) -> np.ndarray:
    """Preprocessed queries (:func:`prepare_query`) -> vectors in one forward pass,
    through the index's recipe (flip TTA) when it has one."""
    encoder = index.encoder()
    batch = encoder.collate(prepared)
    recipe = index.recipe
    if recipe is not None:
        return recipe.encode_batch(encoder, batch)
    return encoder.encode(batch)


def embed_texts(index, text: str | list[str]) -> tuple[list[str], np.ndarray]:
    """Text queries -> (labels, vectors) with the index encoder's text tower."""
    texts = [text] if isinstance(text, str) else [str(t) for t in text]
    if not texts or not all(t.strip() for t in texts):
        raise RadsearchError("text query is empty")
    return [f"text:{t}" for t in texts], index.encoder().encode_text(texts)


def search_index(
    index,
    queries,
    k: int = 10,
    *,
    where: dict | None = None,
    one_per_patient: bool = False,
    suggest: str | None = DEFAULT_SUGGEST,
    names: list[str] | None = None,
    text: str | list[str] | None = None,
) -> list[QueryResult]:
    """The one search path (see module docstring).

    ``text``: one or more text queries instead of images, for CLIP-family encoders
    (embedded with the index encoder's text tower, then searched like image vectors,
    the index's recipe included).
    """
    if k < 1:
        raise RadsearchError(f"k must be at least 1 (got {k})")
    if text is not None:
        if queries is not None and not (isinstance(queries, (list, tuple)) and not queries):
            raise RadsearchError("give query images or text, not both")
        labels, qvecs = embed_texts(index, text)
    else:
        labels, qvecs = embed_queries(index, queries)
    if names:
        labels = list(names)
    return search_vectors(
        index, qvecs, k, where=where, one_per_patient=one_per_patient, suggest=suggest, names=labels
    )


def search_vectors(
    index,
    qvecs: np.ndarray,
    k: int = 10,
    *,
    where: dict | None = None,
    one_per_patient: bool = False,
    suggest: str | None = DEFAULT_SUGGEST,
    names: list[str] | None = None,
) -> list[QueryResult]:
    """Search with already-embedded (L2-normalised, pre-recipe) query vectors."""
    names = names or [f"vector[{i}]" for i in range(len(qvecs))]
    if index.count == 0:
        return [QueryResult(n, [], None) for n in names]
    rows_allowed = filter_rows(index, where)
    if rows_allowed is not None and len(rows_allowed) == 0:
        return [QueryResult(n, [], None) for n in names]
    has_patient = one_per_patient and PATIENT_COLUMN in index.items.column_names
    pool = len(rows_allowed) if rows_allowed is not None else index.count
    fetch = min(pool, 10 * k if has_patient else k)
    while True:
        scores, rows = knn_rows(index, qvecs, fetch, rows_allowed=rows_allowed)
        results = [
            QueryResult(n, _collect(index, srow, rrow, k, has_patient))
            for n, srow, rrow in zip(names, scores, rows, strict=True)
        ]
        if not has_patient or fetch >= pool or all(len(r.hits) == k for r in results):
            break
        fetch = min(pool, fetch * 4)
    if suggest:
        column = suggest if suggest in index.items.column_names else None
        for r in results:
            r.suggestion = majority_vote(r.hits, column) if column else None
    return results


def knn_rows(index, qvecs: np.ndarray, k: int, rows_allowed: np.ndarray | None = None):
    """The k nearest rows of the index for each (pre-recipe) query vector.

    Applies the index's recipe exactly as every caller sees it (query transform,
    candidate over-fetch, re-ranking); ``evaluate`` uses this too, so the benchmark
    and the product never disagree. Returns ``(scores, rows)``, ``-1`` rows padding.
    """
    recipe = index.recipe
    q = np.asarray(qvecs, np.float32)
    if recipe is not None:
        q = recipe.transform_query(q, index)
    fetch = k if recipe is None else max(k, recipe.candidates(k))
    pool = len(rows_allowed) if rows_allowed is not None else index.count
    scores, rows = index.store.search(q, min(fetch, pool), rows=rows_allowed)
    if recipe is not None:
        scores, rows = recipe.rerank(index, q, scores, rows)
    return scores[:, :k], rows[:, :k]


def _collect(index, scores, rows, k, one_per_patient) -> list[Hit]:
    valid = [(float(s), int(r)) for s, r in zip(scores, rows, strict=True) if r >= 0]
    metas = index.rows([r for _, r in valid]) if valid else []
    hits, patients = [], set()
    for (score, _), meta in zip(valid, metas, strict=True):
        if one_per_patient:
            pid = meta.get(PATIENT_COLUMN, "")
            if pid:
                if pid in patients:
                    continue
                patients.add(pid)
        item_id, source = meta.pop("id"), meta.pop("source")
        hits.append(Hit(len(hits) + 1, score, item_id, source, meta))
        if len(hits) == k:
            break
    return hits
