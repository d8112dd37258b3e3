"""Which study aggregation? Measured on RadBench val, reported once on test.

Studies are RadBench ``group_id`` groups of the four datasets with multi-item studies
(lung ultrasound clips, kidney CT slice groups, COVID CT patients, paediatric chest
X-ray patients); studies whose items disagree on the label are left out. Index =
train studies. The choice is made on 1,601 non-test studies pooled: every train
study against the other train studies (leave-one-study-out) and every val study;
then the chosen aggregation is scored once on the test studies. Prints study
modified P@1 micro and macro per dataset for every aggregation, next to the two
baselines (mean vector, middle item) and single-image P@1 of the same datasets.

    python benchmarks/study_aggregation.py [--vectors NPZ] [--split select|test|both]

Vectors: the tests' cached efficientnet-lite0 embedding of RadBench (``.npz`` with
``emb`` and ``filepath``; see tests/conftest.py).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
from pathlib import Path

import numpy as np

from radsearch.evaluate import protocol
from radsearch.evaluate.studies import study_labels
from radsearch.studies import aggregate as agg
from radsearch.studies.identity import StudyTable

RADBENCH = Path(__file__).resolve().parents[2] / "shared" / "radbench"
DATASETS = ("lung_ultrasound", "kidney_ct", "covid_ct", "pediatric_chest_xray")
CACHE = os.environ.get("RADSEARCH_TEST_CACHE", "/work/cache/tests")


def _symmetric_w(alpha):
    def fn(q, db, starts, sims):
        back = agg.segment_mean(sims.max(axis=0), starts, sims.shape[1])
        return (1 - alpha) * agg.segment_max(sims, starts).mean(axis=0) + alpha * back

    return fn


def _plus_mean_vector(lam):
    def fn(q, db, starts, sims):
        return agg.METHODS["mean-best"](q, db, starts, sims) + lam * agg.METHODS["mean-vector"](
            q, db, starts, sims
        )

    return fn


def _zscore_best(q, db, starts, sims):
    """Per query item, its best-match row standardised across the candidate studies."""
    best = agg.segment_max(sims, starts)
    best = (best - best.mean(axis=1, keepdims=True)) / (best.std(axis=1, keepdims=True) + 1e-6)
    return best.mean(axis=0)


def _symmetric_plus_mv(lam):
    def fn(q, db, starts, sims):
        return agg.METHODS["symmetric"](q, db, starts, sims) + lam * agg.METHODS["mean-vector"](
            q, db, starts, sims
        )

    return fn


CANDIDATES = {
    **{name: name for name in agg.METHODS},
    "symmetric-0.25": _symmetric_w(0.25),
    "symmetric-0.75": _symmetric_w(0.75),
    "mean-best+0.25mv": _plus_mean_vector(0.25),
    "mean-best+1.0mv": _plus_mean_vector(1.0),
    "symmetric+0.25mv": _symmetric_plus_mv(0.25),
    "symmetric+1.0mv": _symmetric_plus_mv(1.0),
    "zscore-best": _zscore_best,
}


def load(vectors: str | None):
    path = vectors or sorted(glob.glob(f"{CACHE}/radbench-*-lite0-*.npz"))[-1]
    with np.load(path) as z:
        emb, paths = z["emb"], z["filepath"].tolist()
    pos = {p: i for i, p in enumerate(paths)}
    with open(RADBENCH / "radbench.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["dataset"] in DATASETS]
    return rows, emb[[pos[r["filepath"]] for r in rows]], path


def split_parts(rows, vecs, split):
    keep = [i for i, r in enumerate(rows) if r["split"] == split]
    sub = [rows[i] for i in keep]
    return sub, vecs[keep], StudyTable.from_ids([r["group_id"] for r in sub])


def score_table(nb, q_vals, i_vals, q_sets):
    """{dataset or 'all': (micro P@1, macro P@1)} from a neighbour table."""
    (q_codes, i_codes), _ = protocol.encode_labels(q_vals, i_vals)
    out = {}
    for name, mask in q_sets.items():
        p = protocol.modified_precision(nb[mask], q_codes[mask], i_codes, max_k=1)
        out[name] = (float(p.micro[0]), float(p.macro[0]))
    return out


def study_hits(train, split, method, leave_out: bool):
    """Per scored query study: (its label, its dataset, whether the top study shares it)."""
    (i_rows, i_vecs, i_tab), (q_rows, q_vecs, q_tab) = train, split
    i_lab, _ = study_labels(i_tab, [r["label"] for r in i_rows])
    q_lab, _ = study_labels(q_tab, [r["label"] for r in q_rows])
    i_st = np.flatnonzero([v != "" for v in i_lab])
    rows, starts, kept = i_tab.gather(i_st)
    db = np.ascontiguousarray(i_vecs[rows])
    means = agg.study_means(db, starts)
    out = []
    for s in np.flatnonzero([v != "" for v in q_lab]):
        q = q_vecs[q_tab.rows(s)]
        scores = np.array(agg.score_studies(q, db, starts, method, means=means), np.float64)
        if leave_out:  # the query is a train study: not its own answer
            scores[kept == i_tab.find(q_tab.names[s])] = -np.inf
        top = i_lab[kept[int(np.argmax(scores))]]
        out.append((q_lab[s], q_rows[q_tab.rows(s)[0]]["dataset"], top == q_lab[s]))
    return out


def summarise(hits) -> dict:
    """{dataset or 'all': (micro P@1, macro P@1)} (k = 1: modified P@1 is the top hit)."""
    labels = np.asarray([h[0] for h in hits])
    ds = np.asarray([h[1] for h in hits])
    ok = np.asarray([h[2] for h in hits], float)
    out = {}
    for name in ("all", *DATASETS):
        m = np.ones(len(ok), bool) if name == "all" else ds == name
        per_label = [ok[m & (labels == lab)].mean() for lab in np.unique(labels[m])]
        out[name] = (float(ok[m].mean()), float(np.mean(per_label)))
    return out


def single_image_run(train, split):
    (i_rows, i_vecs, _), (q_rows, q_vecs, _) = train, split
    nb = np.argmax(q_vecs @ i_vecs.T, axis=1)[:, None]
    ds = np.asarray([r["dataset"] for r in q_rows])
    sets = {"all": np.ones(len(q_rows), bool), **{d: ds == d for d in DATASETS}}
    return score_table(nb, [r["label"] for r in q_rows], [r["label"] for r in i_rows], sets)


def print_table(title, results):
    cols = ["all", *DATASETS]
    print(f"\n{title}: study P@1 micro / macro")
    print(f"{'aggregation':<24}" + "".join(f"{c[:20]:>22}" for c in cols))
    for name, res in results.items():
        print(f"{name:<24}" + "".join(f"{res[c][0]:>10.3f} / {res[c][1]:.3f}  " for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", help="RadBench embedding .npz (default: the tests' cache)")
    ap.add_argument("--split", choices=["select", "test", "both"], default="both")
    ap.add_argument("--choose", default=None, help="report this aggregation on test")
    args = ap.parse_args()
    rows, vecs, path = load(args.vectors)
    print(f"vectors: {path}")
    train = split_parts(rows, vecs, "train")
    chosen = args.choose
    if args.split in ("select", "both"):
        val = split_parts(rows, vecs, "val")
        res = {
            name: summarise(study_hits(train, train, m, True) + study_hits(train, val, m, False))
            for name, m in CANDIDATES.items()
        }
        print_table("SELECTION (train leave-one-study-out + val, 1,601 studies)", res)
        if chosen is None:
            chosen = max(CANDIDATES, key=lambda n: (res[n]["all"][1], res[n]["all"][0]))
            print(f"\nchosen (best macro P@1): {chosen}")
    if args.split in ("test", "both"):
        test = split_parts(rows, vecs, "test")
        chosen = chosen or agg.DEFAULT_METHOD
        names = dict.fromkeys([chosen, "mean-best", "mean-vector", "middle-item", "max-pair"])
        res = {n: summarise(study_hits(train, test, CANDIDATES[n], False)) for n in names}
        res["single-image (items)"] = single_image_run(train, test)
        print_table(f"TEST (report; shipped default {agg.DEFAULT_METHOD})", res)


if __name__ == "__main__":
    main()
