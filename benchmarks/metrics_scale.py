"""Scale benchmark for the metric code alone (no vectors): the reference paper's
modified precision at k = 1..100, micro and macro, for a 100k x 100 table of
neighbour ids into a 1.6M-row index with 161 labels, next to the paper's pandas
method (element-wise ``map``/``applymap`` + a row ``apply`` per k) on a subset small
enough to finish, in the same run. Both are checked to agree on that subset.

    python benchmarks/metrics_scale.py [--queries 100000] [--index 1600000] [--labels 161]
                                       [--k 100] [--pandas-queries 2000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from radsearch.evaluate.protocol import hit_matrix, modified_precision


def synthetic_table(n_query, n_index, n_labels, k, seed=0):
    """Zipf-like label frequencies; each neighbour is a same-label row with p=0.6."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_labels + 1) ** 0.8
    weights /= weights.sum()
    index_codes = rng.choice(n_labels, size=n_index, p=weights)
    index_codes[:n_labels] = np.arange(n_labels)  # every label present
    query_codes = rng.choice(n_labels, size=n_query, p=weights)
    order = np.argsort(index_codes, kind="stable")
    counts = np.bincount(index_codes, minlength=n_labels)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    same = order[
        starts[query_codes][:, None]
        + (rng.random((n_query, k)) * counts[query_codes][:, None]).astype(np.int64)
    ]
    other = rng.integers(0, n_index, size=(n_query, k))
    nb = np.where(rng.random((n_query, k)) < 0.6, same, other)
    return nb, query_codes, index_codes


def ours(nb, qc, ic, n_labels, k):
    t = time.perf_counter()
    hits = hit_matrix(nb, qc, ic)
    res = modified_precision(nb, qc, ic, n_labels, max_k=k, hits=hits)
    return time.perf_counter() - t, res


def pandas_method(nb, qc, ic, k):
    """The reference paper's evaluate_retrieval.py approach, re-expressed on this data:
    filepath strings in the kNN table, element-wise mapping to labels, a boolean
    table, and for each N a row-wise ``apply`` with the capped precision."""
    import pandas as pd

    paths = np.char.add("img/", np.arange(len(ic)).astype(str))
    index_map = dict(zip(paths.tolist(), ic.tolist(), strict=True))
    occurrences = pd.Series(ic).value_counts()
    t = time.perf_counter()
    knn = pd.DataFrame(paths[nb], index=qc, columns=[str(i + 1) for i in range(nb.shape[1])])
    mapper = getattr(knn, "applymap", None) or knn.map  # pandas >= 3 renamed applymap
    knn = mapper(index_map.get)
    knn = knn.apply(lambda x: x == knn.index, axis=0)
    micro, macro = [], []
    for N in range(1, k + 1):

        def precision_at_n(row, N=N):
            n = min(N, occurrences[row.name])
            return sum(row.iloc[:n]) / n

        prec = knn.apply(precision_at_n, axis=1)
        micro.append(prec.mean())
        macro.append(prec.groupby(knn.index).mean().mean())
    return time.perf_counter() - t, np.asarray(micro), np.asarray(macro)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--index", type=int, default=1_600_000)
    ap.add_argument("--labels", type=int, default=161)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--pandas-queries", type=int, default=2000)
    a = ap.parse_args()

    nb, qc, ic = synthetic_table(a.queries, a.index, a.labels, a.k)
    print(
        f"table {a.queries} x {a.k} neighbour ids into {a.index} rows, {a.labels} labels; "
        f"{os.cpu_count()} CPU(s)"
    )
    secs, res = ours(nb, qc, ic, a.labels, a.k)
    print(
        f"radsearch: P@1..{a.k} micro+macro (+std) on {a.queries} queries: {secs:.2f} s "
        f"(P@1 micro {res.micro[0]:.4f}, P@{a.k} macro {res.macro[-1]:.4f})"
    )

    n = min(a.pandas_queries, a.queries)
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("pandas not installed (pip install 'radsearch[eval]'): no comparison")
        return
    sub_secs, sub_res = ours(nb[:n], qc[:n], ic, a.labels, a.k)
    p_secs, p_micro, p_macro = pandas_method(nb[:n], qc[:n], ic, a.k)
    agree = np.allclose(p_micro, sub_res.micro, atol=1e-9) and np.allclose(
        p_macro, sub_res.macro, atol=1e-9
    )
    extrapolated = p_secs * a.queries / n
    print(
        f"pandas method on {n} queries: {p_secs:.2f} s (radsearch on the same subset: {sub_secs:.3f} s; "
        f"results agree: {agree})"
    )
    print(
        f"pandas extrapolated to {a.queries} queries: {extrapolated:.0f} s "
        f"-> radsearch is {extrapolated / secs:.0f}x faster on the full table "
        f"({p_secs / max(sub_secs, 1e-9):.0f}x on the subset)"
    )
    if not agree:
        raise SystemExit("pandas and radsearch disagree")


if __name__ == "__main__":
    main()
