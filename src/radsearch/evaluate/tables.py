"""The CSV tables of an evaluation: per label, per group (e.g. source dataset) and
the summary, from the protocol's ``ColumnMetrics`` (see docs/evaluation.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from radsearch.evaluate import protocol

TABLE_KS = (1, 3, 5, 10)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])


def per_label_rows(cm: protocol.ColumnMetrics) -> list[list]:
    p = cm.precision
    K = p.per_query.shape[1]
    vote_k = max((k for k in cm.predictions), default=None)
    rows = []
    for c, label in enumerate(cm.vocab):
        nq = int(p.per_label_queries[c])
        row = [label, int(cm.index_counts[c]), nq, int(p.absent.get(c, 0))]
        row += [float(p.per_label_mean[c, k - 1]) if nq and k <= K else "" for k in TABLE_KS]
        if vote_k and nq:
            mask = cm.true_codes == c
            row.append(float((cm.predictions[vote_k][mask] == c).mean()))
        else:
            row.append("")
        rows.append(row)
    return rows


def per_group_rows(cm: protocol.ColumnMetrics, groups: list[str]) -> list[list]:
    """Micro modified P@k per group (e.g. source dataset) over the scored queries."""
    p = cm.precision
    K = p.per_query.shape[1]
    g = np.asarray(groups, dtype=object)[p.scored]
    rows = []
    for name in sorted(set(g.tolist())):
        m = g == name
        pq = p.per_query[m]
        rows.append(
            [cm.column, name, int(m.sum())]
            + [float(pq[:, k - 1].mean()) if k <= K else "" for k in TABLE_KS]
        )
    return rows


def write_tables(opts, data, metrics: dict, col_metrics: dict, out: Path) -> None:
    """Step 5: per-label, per-group and summary CSV tables."""
    has_group = opts.group_column in data.refs[0].metadata
    groups = data.column(opts.group_column)[0] if has_group else None
    group_rows: list[list] = []
    for col, cm in col_metrics.items():
        _write_csv(
            out / f"per_label_{_safe(col)}.csv",
            ["label", "index_rows", "queries", "queries_absent_from_index"]
            + [f"P@{k}" for k in TABLE_KS]
            + ["knn_vote_recall"],
            per_label_rows(cm),
        )
        if has_group:
            group_rows += per_group_rows(cm, groups)
    if has_group:
        _write_csv(
            out / f"per_{_safe(opts.group_column)}.csv",
            ["column", opts.group_column, "queries"] + [f"P@{k}" for k in TABLE_KS],
            group_rows,
        )
    _write_csv(
        out / "summary.csv",
        ["column", "average"] + [f"P@{k}" for k in TABLE_KS],
        [
            [c, avg] + [metrics["precision_at_k"][c][avg].get(str(k), "") for k in TABLE_KS]
            for c in opts.label_columns
            for avg in ("micro", "macro")
        ],
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
