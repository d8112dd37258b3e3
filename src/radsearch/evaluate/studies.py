"""Study-level retrieval metric: studies of the query split against studies of the index
split, scored with the whole-image protocol's modified P@k (``protocol``).

A study's label is its items' label; studies whose items disagree have no study label
and are left out (of queries and index alike) and counted. Queries are ranked with the
same aggregation code as ``radsearch search --study`` (``radsearch.studies``), and the
two baselines the issue asks for ride along: one mean-pooled vector per study and the
study's middle item as the only query (hits grouped by study).
"""

from __future__ import annotations

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.evaluate import protocol
from radsearch.studies.aggregate import DEFAULT_METHOD, score_studies
from radsearch.studies.identity import StudyTable

BASELINES = {
    "study_baseline_mean_vector": "mean-vector",
    "study_baseline_single_item": "middle-item",
}


def study_labels(table: StudyTable, labels) -> tuple[list[str], np.ndarray]:
    """Per study its label ('' when its items disagree or carry none) and a mixed mask."""
    labels = np.asarray(labels, dtype=object)
    out, mixed = [], np.zeros(len(table), bool)
    for s in range(len(table)):
        values = {str(v) for v in labels[table.rows(s)] if v not in (None, "")}
        mixed[s] = len(values) > 1
        out.append(values.pop() if len(values) == 1 else "")
    return out, mixed


def study_neighbours(
    q_vecs: np.ndarray,
    q_table: StudyTable,
    q_studies: np.ndarray,
    db_vecs: np.ndarray,
    i_table: StudyTable,
    i_studies: np.ndarray,
    k: int,
    method: str = DEFAULT_METHOD,
) -> np.ndarray:
    """Q_studies x k: positions in ``i_studies`` of each query study's best studies."""
    rows, starts, kept = i_table.gather(i_studies)
    if len(kept) != len(i_studies):
        raise RadsearchError("an index study has no items")
    db = np.asarray(db_vecs, np.float32)[rows]
    k = min(k, len(i_studies))
    nb = np.empty((len(q_studies), k), np.int64)
    for n, s in enumerate(q_studies):
        scores = score_studies(
            np.asarray(q_vecs[q_table.rows(int(s))], np.float32), db, starts, method
        )
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        nb[n] = top[np.lexsort((top, -scores[top]))]
    return nb


def study_metrics(
    q_ids,
    q_labels,
    q_vecs,
    i_ids,
    i_labels,
    i_vecs,
    *,
    max_k: int = 10,
    methods: dict[str, str] | None = None,
) -> dict:
    """``{"study": ..., "study_baseline_mean_vector": ..., "study_baseline_single_item": ...}``.

    Each entry: ``precision_at_k`` (micro, macro), the aggregation used and the counts
    (studies scored, left out as mixed-label, unlabelled).
    """
    methods = methods or {"study": DEFAULT_METHOD, **BASELINES}
    q_table, i_table = StudyTable.from_ids(q_ids), StudyTable.from_ids(i_ids)
    q_lab, q_mixed = study_labels(q_table, q_labels)
    i_lab, i_mixed = study_labels(i_table, i_labels)
    q_studies = np.flatnonzero([v != "" for v in q_lab])
    i_studies = np.flatnonzero([v != "" for v in i_lab])
    if len(q_studies) == 0 or len(i_studies) == 0:
        raise RadsearchError("study metric: no query or index study has a single label")
    counts = {
        "query_studies": len(q_table),
        "index_studies": len(i_table),
        "mixed_label_query_studies": int(q_mixed.sum()),
        "mixed_label_index_studies": int(i_mixed.sum()),
        "unlabelled_query_studies": int(len(q_table) - len(q_studies) - q_mixed.sum()),
        "multi_item_query_studies": int(
            sum(1 for s in q_studies if q_table.ends[s] - q_table.starts[s] > 1)
        ),
    }
    q_vals = [q_lab[s] for s in q_studies]
    i_vals = [i_lab[s] for s in i_studies]
    out = {}
    for name, method in methods.items():
        nb = study_neighbours(q_vecs, q_table, q_studies, i_vecs, i_table, i_studies, max_k, method)
        cm = protocol.column_metrics("study", nb, q_vals, i_vals, max_k=nb.shape[1])
        p = cm.to_json()["precision_at_k"]
        out[name] = {
            "aggregation": method,
            "precision_at_k": {"micro": p["micro"], "macro": p["macro"]},
            "queries_scored": int(cm.precision.scored.sum()),
            "counts": counts,
        }
    return out
