"""Retrieval metrics on a plain neighbour-id table (no vectors, no pandas).

Inputs are integer arrays: ``neighbours`` (Q x K rows of the index, best first, ``-1``
for padding), ``query_codes`` (Q label codes) and ``index_codes`` (N label codes);
code ``-1`` means "no label". Everything is vectorised over queries, so a
100k x 100 table into a 1.6M-row index takes seconds (``benchmarks/metrics_scale.py``).

"Modified" precision at k follows the reference paper's published
``evaluate_retrieval.py`` (Denner et al. 2025): for each query, k is capped at the
number of index rows carrying the query's label, ``n = min(k, count)``, and
``P = hits in the first n / n``. Micro = mean over queries (std over queries, ddof 1);
macro = mean over the query labels of the per-label mean, and macro std = mean of
the per-label stds (labels with one query have no std and are skipped, as pandas
does). Queries whose label has no index row cannot be scored (the paper's code
divides by zero there); they are left out and reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.vote import vote

DEFAULT_KS = (1, 3, 5, 10)
# neighbours per query that ``evaluate`` fetches (``--max-k``) and ``tune`` scores from
DEFAULT_MAX_K = 100


def encode_labels(*columns, empty=("",)) -> tuple[list[np.ndarray], list[str]]:
    """String label arrays -> integer codes over their shared sorted vocabulary.

    Values in ``empty`` (and None) get code -1."""
    empty_set = set(empty)
    vocab = sorted(
        {str(v) for col in columns for v in col if v is not None and str(v) not in empty_set}
    )
    lookup = {v: i for i, v in enumerate(vocab)}
    out = []
    for col in columns:
        out.append(
            np.fromiter(
                (lookup.get(str(v), -1) if v is not None else -1 for v in col),
                dtype=np.int64,
                count=len(col),
            )
        )
    return out, vocab


def hit_matrix(
    neighbours: np.ndarray, query_codes: np.ndarray, index_codes: np.ndarray
) -> np.ndarray:
    """Q x K bool: does neighbour j of query q carry q's label (padding never does)."""
    nb = np.asarray(neighbours)
    if nb.ndim != 2 or nb.shape[0] != len(query_codes):
        raise RadsearchError(
            f"neighbour table has shape {nb.shape}, expected ({len(query_codes)}, k)"
        )
    index_codes = np.asarray(index_codes)
    lab = index_codes[np.where(nb >= 0, nb, 0)]
    q = np.asarray(query_codes)[:, None]
    return (lab == q) & (nb >= 0) & (q >= 0)


def label_counts(index_codes: np.ndarray, n_labels: int) -> np.ndarray:
    codes = np.asarray(index_codes)
    return np.bincount(codes[codes >= 0], minlength=n_labels).astype(np.int64)


def _group_stats(values: np.ndarray, groups: np.ndarray, n_groups: int):
    """Per-group mean and sample std (ddof 1; NaN for single-member groups) of each
    column of ``values`` (Q x M); returns (counts, means, stds) with groups as rows."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, values.shape[1]))
    _add_rows(sums, groups, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
        dev = values - means[groups]
        sq = np.zeros_like(sums)
        _add_rows(sq, groups, dev * dev)
        stds = np.sqrt(sq / (counts[:, None] - 1))
    stds[counts < 2] = np.nan
    return counts, means, stds


def _add_rows(acc: np.ndarray, groups: np.ndarray, values: np.ndarray) -> None:
    """acc[g] += sum of values rows in group g (sort + reduceat: fast for many rows)."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    if len(g) == 0:
        return
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    acc[g[starts]] += np.add.reduceat(values[order], starts, axis=0)


@dataclass
class PrecisionResult:
    """Modified P@k for k = 1..K (index k-1), and who was scored."""

    ks: np.ndarray
    micro: np.ndarray
    micro_std: np.ndarray
    macro: np.ndarray
    macro_std: np.ndarray
    per_query: np.ndarray  # Q_scored x K
    scored: np.ndarray  # bool mask over the input queries
    per_label_mean: np.ndarray  # L x K (NaN where a label has no scored query)
    per_label_queries: np.ndarray  # L
    absent: dict = field(default_factory=dict)  # label code -> number of unscorable queries


def modified_precision(
    neighbours: np.ndarray,
    query_codes: np.ndarray,
    index_codes: np.ndarray,
    n_labels: int | None = None,
    max_k: int | None = None,
    hits: np.ndarray | None = None,
) -> PrecisionResult:
    """The paper's modified P@1..K, micro and macro (see module docstring)."""
    query_codes = np.asarray(query_codes, dtype=np.int64)
    index_codes = np.asarray(index_codes, dtype=np.int64)
    if n_labels is None:
        n_labels = int(max(query_codes.max(initial=-1), index_codes.max(initial=-1))) + 1
    if hits is None:
        hits = hit_matrix(neighbours, query_codes, index_codes)
    K = hits.shape[1] if max_k is None else min(max_k, hits.shape[1])
    hits = hits[:, :K]
    counts = label_counts(index_codes, n_labels)
    cap = np.where(query_codes >= 0, counts[np.maximum(query_codes, 0)], 0)
    scored = cap > 0
    absent_codes = query_codes[(~scored) & (query_codes >= 0)]
    absent = {
        int(c): int(n) for c, n in zip(*np.unique(absent_codes, return_counts=True), strict=True)
    }
    if not scored.any():
        raise RadsearchError("no query can be scored: none of the query labels occurs in the index")
    cum = np.cumsum(hits[scored], axis=1, dtype=np.int32)
    ks = np.arange(1, K + 1)
    n = np.minimum(ks[None, :], cap[scored][:, None])
    per_query = np.take_along_axis(cum, n - 1, axis=1) / n
    micro = per_query.mean(axis=0)
    micro_std = per_query.std(axis=0, ddof=1) if len(per_query) > 1 else np.full(K, np.nan)
    q_codes = query_codes[scored]
    nq, means, stds = _group_stats(per_query, q_codes, n_labels)
    present = nq > 0
    macro = means[present].mean(axis=0)
    with np.errstate(invalid="ignore"):
        sd = stds[present]
        valid = ~np.isnan(sd)
        macro_std = np.where(
            valid.any(axis=0), np.nansum(sd, axis=0) / np.maximum(valid.sum(axis=0), 1), np.nan
        )
    return PrecisionResult(
        ks,
        micro,
        micro_std,
        macro,
        macro_std,
        per_query,
        scored,
        means,
        nq.astype(np.int64),
        absent,
    )


def plain_precision(hits: np.ndarray) -> np.ndarray:
    """Unmodified P@k (denominator k) per query, k = 1..K: Q x K."""
    return np.cumsum(hits, axis=1, dtype=np.int32) / np.arange(1, hits.shape[1] + 1)


def recall_at_k(hits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Share of the query's relevant index rows among its first k neighbours: Q x K."""
    rel = np.asarray(relevant, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.cumsum(hits, axis=1, dtype=np.int32) / rel


def average_precision_at_k(hits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP@k = sum_{i<=k} P@i * rel_i / min(k, relevant), per query, k = 1..K: Q x K."""
    ks = np.arange(1, hits.shape[1] + 1)
    prec = np.cumsum(hits, axis=1, dtype=np.int32) / ks
    num = np.cumsum(prec * hits, axis=1)
    den = np.minimum(ks[None, :], np.asarray(relevant)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def majority_vote(
    neighbours: np.ndarray, index_codes: np.ndarray, k: int, n_labels: int
) -> np.ndarray:
    """The :func:`radsearch.vote.vote` winner among the first k neighbours (the rule
    ``search`` suggests with: a tie goes to the tied label ranked first). -1 where no
    neighbour has a label."""
    nb = np.asarray(neighbours)[:, :k]
    return vote(np.where(nb >= 0, np.asarray(index_codes)[np.maximum(nb, 0)], -1), n_labels)


def classification_scores(true: np.ndarray, pred: np.ndarray, n_labels: int) -> dict:
    """Accuracy, balanced accuracy (mean recall over true classes) and macro F1 (over
    classes that occur as truth or prediction)."""
    true = np.asarray(true)
    pred = np.asarray(pred)
    ok = true >= 0
    true, pred = true[ok], pred[ok]
    if len(true) == 0:
        return {
            "accuracy": float("nan"),
            "balanced_accuracy": float("nan"),
            "macro_f1": float("nan"),
        }
    p = np.where(pred >= 0, pred, n_labels)  # "no prediction" is always wrong
    cm = np.bincount(true * (n_labels + 1) + p, minlength=n_labels * (n_labels + 1)).reshape(
        n_labels, n_labels + 1
    )[:, :n_labels]
    tp = np.diag(cm).astype(np.float64)
    support = np.bincount(true, minlength=n_labels)
    predicted = np.bincount(pred[pred >= 0], minlength=n_labels)[:n_labels]
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    prec = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(
        2 * prec * recall, prec + recall, out=np.zeros_like(tp), where=(prec + recall) > 0
    )
    f1_classes = present | (predicted > 0)
    return {
        "accuracy": float(tp.sum() / len(true)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[f1_classes].mean()),
    }


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    ok = (np.asarray(true) >= 0) & (np.asarray(pred) >= 0)
    t, p = np.asarray(true)[ok], np.asarray(pred)[ok]
    return np.bincount(t * n_labels + p, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def _by_k(arr: np.ndarray, ks) -> dict:
    return {
        str(k): (None if np.isnan(arr[k - 1]) else float(arr[k - 1])) for k in ks if k <= len(arr)
    }


@dataclass
class ColumnMetrics:
    """Every retrieval metric of one label column, JSON-ready via ``to_json``."""

    column: str
    vocab: list[str]
    precision: PrecisionResult
    plain: np.ndarray  # K, mean over scored queries
    map_at_k: np.ndarray
    recall: np.ndarray
    knn: dict  # "k" -> scores
    predictions: dict  # k -> predicted codes (scored queries)
    true_codes: np.ndarray  # scored queries' codes
    index_counts: np.ndarray

    def to_json(self, ks=None) -> dict:
        K = len(self.precision.micro)
        all_ks = list(range(1, K + 1))
        p = self.precision
        return {
            "precision_at_k": {
                "micro": _by_k(p.micro, all_ks),
                "macro": _by_k(p.macro, all_ks),
                "micro_std": _by_k(p.micro_std, all_ks),
                "macro_std": _by_k(p.macro_std, all_ks),
            },
            "plain_precision_at_k": _by_k(self.plain, all_ks),
            "map_at_k": _by_k(self.map_at_k, all_ks),
            "recall_at_k": _by_k(self.recall, all_ks),
            "knn_classification": self.knn,
            "absent_from_index": {
                "queries": int(sum(p.absent.values())),
                "labels": {self.vocab[c]: n for c, n in sorted(p.absent.items())},
            },
            "counts": {
                "labels_in_index": int((self.index_counts > 0).sum()),
                "labels_in_queries": int((p.per_label_queries > 0).sum()),
                "queries_scored": int(p.scored.sum()),
            },
        }


def column_metrics(
    column: str,
    neighbours: np.ndarray,
    query_values,
    index_values,
    *,
    max_k: int | None = None,
    vote_ks=DEFAULT_KS,
) -> ColumnMetrics:
    """All metrics of one label column from the neighbour table and label strings."""
    (q_codes, i_codes), vocab = encode_labels(query_values, index_values)
    L = len(vocab)
    hits = hit_matrix(neighbours, q_codes, i_codes)
    prec = modified_precision(neighbours, q_codes, i_codes, L, max_k=max_k, hits=hits)
    K = prec.per_query.shape[1]
    h = hits[prec.scored, :K]
    counts = label_counts(i_codes, L)
    relevant = counts[q_codes[prec.scored]]
    nb = np.asarray(neighbours)[prec.scored]
    knn, preds = {}, {}
    for k in vote_ks:
        if k > K:
            continue
        pred = majority_vote(nb, i_codes, k, L)
        preds[k] = pred
        knn[str(k)] = classification_scores(q_codes[prec.scored], pred, L)
    return ColumnMetrics(
        column,
        vocab,
        prec,
        plain_precision(h).mean(axis=0),
        average_precision_at_k(h, relevant).mean(axis=0),
        recall_at_k(h, relevant).mean(axis=0),
        knn,
        preds,
        q_codes[prec.scored],
        counts,
    )
