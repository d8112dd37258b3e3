"""Evaluation suite: the reference paper's retrieval protocol (modified precision at
k, micro and macro), index-size study, embedding-space quality, linear probe, and a
self-contained HTML report. ``radsearch evaluate`` / ``radsearch compare``.

The metric code (``protocol``) works on a plain neighbour-id table, so it also scores
tables produced elsewhere; neighbours produced here always come from
``radsearch.search.knn_rows`` on an ``Index``, exactly as ``search`` and ``serve``.

Modules: ``runner`` (the evaluation as named steps), ``embeddings`` (vectors from a
file or the cached pipeline), ``protocol`` (metrics), ``analyses`` (index size, quality,
map, probe; the scratch index), ``studies`` (study-level P@k), ``tables`` (CSV),
``report`` (plots, HTML, compare), ``cli`` (the verbs).
"""

from radsearch.evaluate.protocol import (
    column_metrics,
    encode_labels,
    hit_matrix,
    majority_vote,
    modified_precision,
)

__all__ = [
    "EvalOptions",
    "column_metrics",
    "encode_labels",
    "hit_matrix",
    "majority_vote",
    "modified_precision",
    "run_evaluation",
]


def __getattr__(name):
    if name in ("EvalOptions", "run_evaluation"):
        from radsearch.evaluate import runner

        return getattr(runner, name)
    raise AttributeError(name)
