"""The metric code against an independent, loop-by-loop reading of the reference
paper's ``evaluate_retrieval.py`` (Denner et al. 2025, MIC-DKFZ/foundation-models-for-cbmir):
per query n = min(N, index rows with the query's label), P = hits in the first n / n;
micro = mean (and sample std) over queries; macro = mean over query labels of the
per-label mean, macro std = mean of the per-label sample stds (NaN ones skipped)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from radsearch.errors import RadsearchError
from radsearch.evaluate import protocol
from radsearch.evaluate.protocol import (
    classification_scores,
    column_metrics,
    encode_labels,
    majority_vote,
    modified_precision,
)


def reference_precision(knn_ids, query_labels, index_labels, N):
    """Plain-Python reference: returns (micro mean, micro std, macro mean, macro std,
    number of queries skipped because their label is absent from the index)."""
    occurrences = {}
    for lab in index_labels:
        occurrences[lab] = occurrences.get(lab, 0) + 1
    per_query, labels, skipped = [], [], 0
    for row, qlab in zip(knn_ids, query_labels, strict=True):
        available = occurrences.get(qlab, 0)
        if available == 0:
            skipped += 1
            continue
        n = min(N, available)
        correct = 0
        for j in range(n):
            if row[j] >= 0 and index_labels[row[j]] == qlab:
                correct += 1
        per_query.append(correct / n)
        labels.append(qlab)
    micro = sum(per_query) / len(per_query)
    micro_std = statistics.stdev(per_query) if len(per_query) > 1 else math.nan
    by_label = {}
    for p, lab in zip(per_query, labels, strict=True):
        by_label.setdefault(lab, []).append(p)
    means = [sum(v) / len(v) for v in by_label.values()]
    stds = [statistics.stdev(v) for v in by_label.values() if len(v) > 1]
    macro = sum(means) / len(means)
    macro_std = sum(stds) / len(stds) if stds else math.nan
    return micro, micro_std, macro, macro_std, skipped


def _check(knn, qlab, ilab, K):
    (qc, ic), vocab = encode_labels(qlab, ilab)
    res = modified_precision(np.asarray(knn), qc, ic, len(vocab), max_k=K)
    for N in range(1, K + 1):
        mi, mis, ma, mas, skipped = reference_precision(knn, qlab, ilab, N)
        assert res.micro[N - 1] == pytest.approx(mi, abs=1e-6)
        assert res.macro[N - 1] == pytest.approx(ma, abs=1e-6)
        for got, want in ((res.micro_std[N - 1], mis), (res.macro_std[N - 1], mas)):
            if math.isnan(want):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(want, abs=1e-6)
        assert sum(res.absent.values()) == skipped
    return res


def test_known_answers_by_hand():
    # index labels: a a a b c ; query 0 (a) gets a b a a c ; query 1 (b) gets b a a ...
    ilab = ["a", "a", "a", "b", "c"]
    knn = [[0, 3, 1, 2, 4], [3, 0, 1, 2, 4], [4, 3, 0, 1, 2]]
    qlab = ["a", "b", "c"]
    (qc, ic), vocab = encode_labels(qlab, ilab)
    r = modified_precision(np.asarray(knn), qc, ic, len(vocab))
    # P@1: 1, 1, 1 ; P@3: a -> 2/3 ; b (1 index row) -> cap 1 -> 1 ; c -> cap 1 -> 1
    assert r.micro[0] == pytest.approx(1.0)
    assert r.micro[2] == pytest.approx((2 / 3 + 1 + 1) / 3)
    # P@5: a cap 3 -> first 3 are 0,3,1 -> 2/3
    assert r.per_query[0, 4] == pytest.approx(2 / 3)
    assert r.macro[4] == pytest.approx((2 / 3 + 1 + 1) / 3)


@pytest.mark.parametrize("seed", range(6))
def test_random_tables_match_reference(seed):
    rng = np.random.default_rng(seed)
    n_index, n_query, K = 60, 40, 12
    # skewed label frequencies: some labels have fewer index rows than K, one has 1
    ilab = list(rng.choice(["a", "b", "c", "d"], size=n_index - 1, p=[0.6, 0.3, 0.07, 0.03])) + [
        "e"
    ]
    qlab = list(rng.choice(["a", "b", "c", "d", "e"], size=n_query))
    knn = np.stack([rng.permutation(n_index)[:K] for _ in range(n_query)])
    _check(knn.tolist(), qlab, ilab, K)


def test_ties_and_duplicate_neighbour_labels():
    # identical rows (tied scores in the kNN) and every neighbour of the same label
    ilab = ["x"] * 3 + ["y"] * 3
    knn = [[0, 1, 2, 3, 4, 5]] * 4 + [[3, 4, 5, 0, 1, 2]] * 4
    qlab = ["x", "x", "y", "y", "y", "y", "x", "x"]
    _check(knn, qlab, ilab, 6)


def test_single_query_labels_and_nan_std():
    ilab = ["a", "b", "b", "c"]
    knn = [[1, 0, 2, 3], [1, 2, 0, 3], [3, 2, 1, 0]]
    qlab = ["a", "b", "c"]  # one query per label: per-label std undefined
    res = _check(knn, qlab, ilab, 4)
    assert np.isnan(res.macro_std).all()


def test_labels_absent_from_index_are_reported_not_scored():
    ilab = ["a", "a", "b"]
    knn = [[0, 1, 2], [2, 0, 1], [0, 1, 2], [1, 0, 2]]
    qlab = ["a", "b", "zzz", "zzz"]
    res = _check(knn, qlab, ilab, 3)
    assert res.scored.tolist() == [True, True, False, False]
    (qc, ic), vocab = encode_labels(qlab, ilab)
    assert res.absent == {vocab.index("zzz"): 2}


def test_no_scorable_query_is_an_error():
    (qc, ic), vocab = encode_labels(["q"], ["a", "b"])
    with pytest.raises(RadsearchError, match="none of the query labels"):
        modified_precision(np.asarray([[0, 1]]), qc, ic, len(vocab))


def test_padding_rows_never_count():
    ilab = ["a", "a"]
    knn = [[0, -1, -1]]
    (qc, ic), vocab = encode_labels(["a"], ilab)
    res = modified_precision(np.asarray(knn), qc, ic, len(vocab))
    assert res.per_query[0].tolist() == [1.0, 0.5, 0.5]


def test_majority_vote_tie_goes_to_nearest():
    ic = np.asarray([0, 1, 1, 0, 2])
    nb = np.asarray([[0, 1, 2, 3], [1, 0, 3, 2], [4, 0, 1, 2]])
    # k=2: query 0 votes 0,1 -> tie, nearest is 0; query 1: 1,0 -> 1; query 2: 2,0 -> 2
    assert majority_vote(nb, ic, 2, 3).tolist() == [0, 1, 2]
    # k=4: query 0: 0,1,1,0 -> tie 2:2 -> 0 (first at rank 1); query 2: 2,0,1,1 -> 1
    assert majority_vote(nb, ic, 4, 3).tolist() == [0, 1, 1]


def test_majority_vote_matches_loop_reference():
    rng = np.random.default_rng(3)
    ic = rng.integers(0, 5, 80)
    nb = np.stack([rng.permutation(80)[:10] for _ in range(50)])
    for k in (1, 3, 5, 10):
        got = majority_vote(nb, ic, k, 5)
        for q in range(50):
            labs = [int(ic[r]) for r in nb[q, :k]]
            best = max(set(labs), key=lambda lab: (labs.count(lab), -labs.index(lab)))
            assert got[q] == best


def test_classification_scores_match_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    t = rng.integers(0, 6, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 7, 300))  # class 6 never true
    s = classification_scores(t, p, 7)
    assert s["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))
    assert s["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))


def test_map_recall_and_plain_precision_reference():
    rng = np.random.default_rng(7)
    ilab = list(rng.choice(list("abc"), 30))
    qlab = list(rng.choice(list("abc"), 20))
    knn = np.stack([rng.permutation(30)[:8] for _ in range(20)])
    cm = column_metrics("label", knn, qlab, ilab)
    for k in (1, 4, 8):
        plain, ap, rec = [], [], []
        for q in range(20):
            rel = [ilab[r] == qlab[q] for r in knn[q, :k]]
            n_rel = ilab.count(qlab[q])
            plain.append(sum(rel) / k)
            rec.append(sum(rel) / n_rel)
            s, hits = 0.0, 0
            for i, r in enumerate(rel, start=1):
                if r:
                    hits += 1
                    s += hits / i
            ap.append(s / min(k, n_rel))
        assert cm.plain[k - 1] == pytest.approx(np.mean(plain), abs=1e-9)
        assert cm.recall[k - 1] == pytest.approx(np.mean(rec), abs=1e-9)
        assert cm.map_at_k[k - 1] == pytest.approx(np.mean(ap), abs=1e-9)
    js = cm.to_json()
    assert set(js["precision_at_k"]) == {"micro", "macro", "micro_std", "macro_std"}
    assert list(js["precision_at_k"]["micro"]) == [str(k) for k in range(1, 9)]


def test_group_stats_many_rows_matches_naive():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 7, 10000)
    v = rng.random((10000, 3))
    counts, means, stds = protocol._group_stats(v, g, 8)
    for c in range(7):
        assert means[c] == pytest.approx(v[g == c].mean(0))
        assert stds[c] == pytest.approx(v[g == c].std(0, ddof=1))
    assert counts[7] == 0
