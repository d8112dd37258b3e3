"""Relevance feedback: re-query with hits marked relevant / not relevant.

Rocchio on the index's own (pre-recipe) vectors: ``q' = a*q + b*mean(relevant) -
c*mean(irrelevant)``, re-normalised, then the ordinary search path (filters,
one-per-patient, the recipe, the vote). Weights were chosen on RadBench val
(docs/regions.md); an exemplar model fitted at query time was not needed to meet the
target and is not built.
"""

from __future__ import annotations

import numpy as np

from radsearch.errors import RadsearchError

ALPHA, BETA, GAMMA = 1.0, 0.8, 0.6


def marked_rows(index, ids, what: str) -> np.ndarray:
    """Rows of the marked ids, or a one-line error naming the unknown one."""
    rows = []
    for item_id in ids or []:
        row = index.row_of(str(item_id))
        if row is None:
            raise RadsearchError(f"{what} id {item_id!r}: not in the index {index.path}")
        rows.append(row)
    return np.asarray(rows, np.int64)


def rocchio(
    q: np.ndarray,
    relevant: np.ndarray,
    irrelevant: np.ndarray,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> np.ndarray:
    """``Q x D`` queries moved toward ``relevant`` and away from ``irrelevant`` (``M x D``)."""
    out = alpha * np.asarray(q, np.float32)
    if len(relevant):
        out = out + beta * np.asarray(relevant, np.float32).mean(axis=0)
    if len(irrelevant):
        out = out - gamma * np.asarray(irrelevant, np.float32).mean(axis=0)
    return (out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def refine_vectors(
    index, qvecs: np.ndarray, relevant=None, irrelevant=None, **weights
) -> np.ndarray:
    """Query vectors after one round of feedback with the marked ids."""
    rel = marked_rows(index, relevant, "relevant")
    irr = marked_rows(index, irrelevant, "irrelevant")
    emb = index.embeddings
    return rocchio(qvecs, np.asarray(emb[np.sort(rel)]), np.asarray(emb[np.sort(irr)]), **weights)


def search_feedback(
    index,
    queries,
    k: int = 10,
    *,
    relevant=None,
    irrelevant=None,
    text=None,
    names=None,
    roi=None,
    **options,
):
    """Whole-image (or text) search re-run with the marked hits (``Index.search``)."""
    from radsearch.search import embed_queries, embed_texts, search_vectors

    if k < 1:
        raise RadsearchError(f"k must be at least 1 (got {k})")
    labels, qvecs = embed_texts(index, text) if text is not None else embed_queries(index, queries)
    qvecs = refine_vectors(index, qvecs, relevant, irrelevant)
    return search_vectors(index, qvecs, k, names=names or labels, **options)
