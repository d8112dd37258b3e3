"""Choosing a retrieval recipe on a validation split, label-free steps only.

The index side is the index-split rows, the queries are the validation rows; the
test split is never read. Each trial fits the recipe on the index rows (the recipe
itself never sees a label) and scores the validation queries exactly as
``radsearch evaluate`` would score them (:func:`score_recipe`: neighbours from
:func:`radsearch.search.knn_rows` on a scratch index, the protocol's modified
precision), so the figure ``tune`` reports is the figure ``evaluate`` gives for that
recipe. The search is greedy over the steps (whiten, cluster, dba, qe, rerank, in
that order): each step keeps the best option the objective accepts, or stays off
(:mod:`radsearch.selection`: by default a step must lift P@1 micro + P@1 macro + P@10
micro with bootstrap confidence and lower none of them beyond its noise). Labels are read
only to score the trials. The ``radsearch tune`` verb is :mod:`radsearch.tune_cli`.
"""

from __future__ import annotations

import time

import numpy as np

from radsearch.recipe import Recipe

KS = (1, 3, 5, 10)

# Options tried per step (``None``: step off). ``quick`` is a smaller grid for CI-sized runs.
GRIDS: dict[str, dict[str, list]] = {
    "default": {
        "whiten": [
            None,
            {"power": 1.0, "shrinkage": 0.1},
            {"power": 0.5, "shrinkage": 0.1},
            {"power": 1.0, "shrinkage": 0.1, "dim": 256},
        ],
        "cluster": [None, {"n": 8, "dim": 64, "power": 0.5}, {"n": 8, "dim": 64, "weight": 2.0}],
        "dba": [None, {"k": 2, "alpha": 3.0}, {"k": 3, "alpha": 3.0}],
        "qe": [None, {"k": 2, "alpha": 3.0}, {"k": 3, "alpha": 3.0}],
        "rerank": [
            None,
            {"k1": 20, "k2": 6, "lambda": 0.3},
            {"k1": 20, "k2": 6, "lambda": 0.6},
            {"k1": 30, "k2": 6, "lambda": 0.8},
        ],
    },
    "quick": {
        "whiten": [None, {"power": 1.0, "shrinkage": 0.1}],
        "cluster": [None, {"n": 4, "dim": 32}],
        "dba": [None, {"k": 3}],
        "qe": [None, {"k": 3}],
        "rerank": [None, {"k1": 10, "k2": 3}],
    },
}


def score_recipe(
    index, recipe: Recipe | None, queries, query_labels, index_labels, ks=KS, max_k=None
) -> dict:
    """Fit ``recipe`` on ``index`` and score ``queries`` as ``radsearch evaluate`` does:
    the same number of neighbours (``max_k``, evaluate's default; with ties or query
    expansion the first ten hits depend on it) from ``knn_rows``, then the protocol's
    modified precision (empty labels are unlabelled, queries whose label the index
    lacks are left out), micro and macro."""
    from radsearch.evaluate.analyses import neighbours
    from radsearch.evaluate.protocol import DEFAULT_MAX_K, encode_labels, modified_precision

    index.set_recipe(recipe)
    t0 = time.perf_counter()
    k = max(max(ks), max_k or DEFAULT_MAX_K)
    _, rows = neighbours(index, np.asarray(queries, np.float32), k)
    seconds = time.perf_counter() - t0
    (q_codes, i_codes), vocab = encode_labels(query_labels, index_labels)
    p = modified_precision(rows, q_codes, i_codes, len(vocab), max_k=max(ks))
    m: dict = {"queries": int(p.scored.sum())}
    for k in ks:
        if k <= len(p.micro):
            m[f"p@{k}_micro"] = float(p.micro[k - 1])
            m[f"p@{k}_macro"] = float(p.macro[k - 1])
    m["seconds"] = round(seconds, 3)
    m["per_label_p@1"] = {
        vocab[c]: float(p.per_label_mean[c, 0]) for c in np.flatnonzero(p.per_label_queries)
    }
    return m


def tune_recipe(
    index_vectors: np.ndarray,
    index_labels,
    val_vectors: np.ndarray,
    val_labels,
    grid: str | dict = "default",
    *,
    flip_val_vectors: np.ndarray | None = None,
    log=None,
    objective="robust",
    groups=None,
) -> tuple[Recipe | None, dict, list[dict]]:
    """Greedy search over :data:`GRIDS` under ``objective`` (a name of
    :data:`radsearch.selection.OBJECTIVES` or an objective); returns ``(best recipe,
    its metrics, trials)``. Each trial records whether the objective accepted it, its
    bootstrap confidence and whether it was kept.

    ``groups`` (one value per validation query, e.g. the patient) makes the robust
    objective resample whole groups. ``flip_val_vectors`` (the validation queries'
    mirrored-image embeddings, optional) lets the search try flip TTA too.
    """
    from radsearch.selection import RecipeTrials, get_objective, greedy_search

    options = GRIDS[grid] if isinstance(grid, str) else grid
    obj = get_objective(objective) if isinstance(objective, str) else objective
    plain = RecipeTrials(index_vectors, index_labels, val_vectors, val_labels, groups)
    score = plain
    if flip_val_vectors is not None:
        mixed = _flip_mix(val_vectors, flip_val_vectors)
        flipped = plain.queries(mixed, val_labels, groups)

        def score(steps):
            return (flipped if "flip" in steps else plain)(steps)

        options = {"flip": [None, {}], **options}
    steps, best, _, trials = greedy_search(score, options, obj, log=log)
    # steps apply in the recipe's fixed order regardless of the search order
    return (Recipe(steps) if steps else None), best.summary(), trials


def _flip_mix(v: np.ndarray, vf: np.ndarray) -> np.ndarray:
    s = np.asarray(v, np.float32) + np.asarray(vf, np.float32)
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
