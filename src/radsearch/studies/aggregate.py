"""How a query study's items and a candidate study's items become one study score.

Everything here works on one similarity matrix ``sims`` (query items x candidate
items, cosine of L2-normalised vectors) whose columns are grouped by study
(``starts``: the first column of each study). The alternatives measured on RadBench
val (``benchmarks/study_aggregation.py``, docs/studies.md) are all kept so that the
evaluation can report the baselines with the very code it reports the choice with:

- ``mean-vector``: cosine of the two studies' mean vectors (a baseline).
- ``middle-item``: the query study's middle item alone, the study scored by its best
  item (a baseline: single-image search grouped by study).
- ``max-pair``: the best single pair (slice-level search grouped by study).
- ``mean-best``: mean over query items of their best match in the study.
- ``symmetric``: ``mean-best`` averaged with its mirror (mean over the study's items
  of their best match among the query items), so a study is not rewarded for one
  item that resembles everything.
- ``rrf``: reciprocal-rank fusion of the per-item study rankings.
- ``mean-best+mean-vector``: ``mean-best`` plus a share of the mean-vector cosine.
- ``symmetric+mean-vector`` (the default, chosen on 1,601 non-test RadBench studies:
  train leave-one-study-out and val): ``symmetric`` plus a share of the mean-vector
  cosine: the pairs say which items match, the mean vector what the studies hold.

Methods take ``(q, db, starts, sims, means)``; ``means`` (the candidates' normalised
mean vectors, ``study_means``) spares recomputing them per query.
"""

from __future__ import annotations

import numpy as np

from radsearch.errors import RadsearchError

RRF_K = 60.0
# Share of the mean-vector cosine added by the combined method.
MEAN_VECTOR_WEIGHT = 0.5


def segment_max(sims: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per query item (row), its best similarity in each study (column group): Q x C."""
    return np.maximum.reduceat(sims, starts, axis=1)


def segment_mean(values: np.ndarray, starts: np.ndarray, total: int) -> np.ndarray:
    """Mean of a 1-D per-column array within each study."""
    counts = np.diff(np.append(starts, total))
    return np.add.reduceat(values, starts) / counts


def study_means(db: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each study's L2-normalised mean vector (C x D)."""
    sums = np.add.reduceat(np.asarray(db, np.float32), starts, axis=0)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def _mean_vector(q, db, starts, sims, means=None):
    qm = q.mean(axis=0)
    qm /= max(float(np.linalg.norm(qm)), 1e-12)
    return (study_means(db, starts) if means is None else means) @ qm


def _middle_item(q, db, starts, sims, means=None):
    return segment_max(sims[len(q) // 2 : len(q) // 2 + 1], starts)[0]


def _max_pair(q, db, starts, sims, means=None):
    return segment_max(sims, starts).max(axis=0)


def _mean_best(q, db, starts, sims, means=None):
    return segment_max(sims, starts).mean(axis=0)


def _symmetric(q, db, starts, sims, means=None):
    back = segment_mean(sims.max(axis=0), starts, sims.shape[1])
    return 0.5 * (_mean_best(q, db, starts, sims) + back)


def _rrf(q, db, starts, sims, means=None):
    best = segment_max(sims, starts)
    ranks = np.argsort(np.argsort(-best, axis=1, kind="stable"), axis=1)
    return (1.0 / (RRF_K + 1.0 + ranks)).sum(axis=0)


def _mean_best_mean_vector(q, db, starts, sims, means=None):
    mv = _mean_vector(q, db, starts, sims, means)
    return _mean_best(q, db, starts, sims) + MEAN_VECTOR_WEIGHT * mv


def _symmetric_mean_vector(q, db, starts, sims, means=None):
    mv = _mean_vector(q, db, starts, sims, means)
    return _symmetric(q, db, starts, sims) + MEAN_VECTOR_WEIGHT * mv


METHODS = {
    "mean-vector": _mean_vector,
    "middle-item": _middle_item,
    "max-pair": _max_pair,
    "mean-best": _mean_best,
    "symmetric": _symmetric,
    "rrf": _rrf,
    "mean-best+mean-vector": _mean_best_mean_vector,
    "symmetric+mean-vector": _symmetric_mean_vector,
}
DEFAULT_METHOD = "symmetric+mean-vector"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise RadsearchError(f"unknown study aggregation {method!r} (choose {', '.join(METHODS)})")
    return method


def score_studies(
    q: np.ndarray,
    db: np.ndarray | None,
    starts: np.ndarray,
    method=DEFAULT_METHOD,
    sims: np.ndarray | None = None,
    means: np.ndarray | None = None,
) -> np.ndarray:
    """One score per candidate study (see module docstring); higher is more similar.

    ``q``: query items x D; ``db``: the candidates' items x D, each study's items
    contiguous from ``starts[i]`` (not needed when ``sims``, the query x candidate-item
    cosines, and, for the mean-vector methods, ``means`` are given); ``method``: a
    name in ``METHODS`` or a function of ``(q, db, starts, sims)`` (how the benchmark
    tries alternatives).
    """
    if len(q) == 0:
        raise RadsearchError("the query study has no items")
    if len(starts) == 0:
        return np.zeros(0, np.float32)
    if sims is None:
        sims = np.asarray(q, np.float32) @ np.asarray(db, np.float32).T
    if callable(method):
        return method(q, db, starts, sims)
    return METHODS[check_method(method)](q, db, starts, sims, means)


def needs_means(method) -> bool:
    """Whether ``method`` uses the candidates' mean vectors."""
    return callable(method) or "mean-vector" in str(method)
