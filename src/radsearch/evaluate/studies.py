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
from radsearch.studies.aggregate import DEFAULT_METHOD, needs_means, score_studies, study_means
from radsearch.studies.identity import StudyTable
from radsearch.studies.search import search_space

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
    means = study_means(db, starts) if needs_means(method) else None
    nb = np.empty((len(q_studies), k), np.int64)
    for n, s in enumerate(q_studies):
        q = np.asarray(q_vecs[q_table.rows(int(s))], np.float32)
        scores = score_studies(q, db, starts, method, means=means)
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
    q_groups=None,
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
        if q_groups is not None:
            first = [q_groups[q_table.rows(int(s))[0]] for s in q_studies]
            out[name]["per_group"] = _per_group(nb, q_vals, i_vals, first)
    return out


def _per_group(nb, q_vals, i_vals, groups) -> dict:
    """Study P@k micro and macro per group (e.g. source dataset) of the query studies."""
    (q_codes, i_codes), _ = protocol.encode_labels(q_vals, i_vals)
    groups = np.asarray(groups, dtype=object)
    out = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        if not (i_codes >= 0).any() or not np.isin(q_codes[m], i_codes).any():
            continue
        p = protocol.modified_precision(nb[m], q_codes[m], i_codes)
        ks = range(1, len(p.micro) + 1)
        out[str(g)] = {
            "studies": int(p.scored.sum()),
            "micro": {str(k): float(p.micro[k - 1]) for k in ks},
            "macro": {str(k): float(p.macro[k - 1]) for k in ks},
        }
    return out


def study_step(opts, data, metrics: dict, index) -> None:
    """The evaluation step for ``--study-column``: study metrics into ``metrics``.

    Studies are named by ``opts.study_column`` (rows where it is empty are their own
    study); labels come from the first label column; vectors are compared in the
    scratch index's search space (its recipe's query and database sides).
    """
    col = opts.study_column
    if col not in data.refs[0].metadata:
        have = ", ".join(sorted(data.refs[0].metadata))
        raise RadsearchError(f"{opts.csv}: --study-column {col}: no such column (columns: {have})")
    label = opts.label_columns[0]
    q_lab, i_lab = data.column(label)
    q_ids = [r.metadata.get(col) or r.id for r in data.query_refs]
    i_ids = [r.metadata.get(col) or r.id for r in data.index_refs]
    q_vecs, db = search_space(index, data.qvecs)
    groups = None
    if opts.group_column in data.refs[0].metadata:
        groups = [r.metadata.get(opts.group_column, "") for r in data.query_refs]
    found = study_metrics(
        q_ids, q_lab, q_vecs, i_ids, i_lab, db, max_k=min(10, len(set(i_ids))), q_groups=groups
    )
    for name, section in found.items():
        section.update({"study_column": col, "label_column": label})
        metrics[name] = section
    c = found["study"]["counts"]
    if c["mixed_label_query_studies"] or c["mixed_label_index_studies"]:
        from radsearch.evaluate.runner import _warn

        _warn(
            f"--study-column {col}: {c['mixed_label_query_studies']} query and "
            f"{c['mixed_label_index_studies']} index studies mix {label!r} values; they are left "
            "out of the study metrics and counted under study.counts"
        )


def report_rows(metrics: dict) -> tuple[str, list[str], list[list]]:
    """(note, header, rows) of the report's study section."""
    c = metrics["study"]["counts"]
    note = (
        f"<p>Studies from column <code>{metrics['study']['study_column']}</code>: "
        f"{c['query_studies']} query and {c['index_studies']} index studies; left out as "
        f"mixed-label: {c['mixed_label_query_studies']} query, "
        f"{c['mixed_label_index_studies']} index. Modified P@k over study labels.</p>"
    )
    header = ["method", "aggregation", "average", "P@1", "P@3", "P@5", "P@10"]
    rows = []
    for name in ("study", *BASELINES):
        p = metrics[name]["precision_at_k"]
        for avg in ("micro", "macro"):
            vals = [p[avg].get(str(k)) for k in (1, 3, 5, 10)]
            rows.append([name, metrics[name]["aggregation"], avg] + [_fmt(v) for v in vals])
    return note, header, rows


def _fmt(v):
    return "" if v is None else f"{v:.4f}"


def print_summary(metrics: dict) -> None:
    """The study lines of ``radsearch evaluate``'s printed table."""
    for name in ("study", *BASELINES):
        p = metrics[name]["precision_at_k"]
        for avg in ("micro", "macro"):
            vals = [p[avg].get(k) for k in ("1", "3", "5", "10")]
            print(f"{name[:14]:<14} {avg:<6} " + " ".join((_fmt(v) or "-").rjust(7) for v in vals))
