"""``radsearch evaluate`` on RadBench (skipped when ../shared/radbench is absent),
using the session's cached EfficientNet-Lite0 embeddings (never re-embedding it all)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from eval_helpers import NO_ANALYSES
from radsearch.cli import main

pytestmark = pytest.mark.radbench
COLUMNS = ["label", "anatomy", "modality"]


def _reference(rows, emb_by_id, column, ks=(1, 3, 5, 10)):
    """Independent: numpy exact cosine kNN, then the paper's capped precision in loops."""
    idx = [r for r in rows if r["split"] == "train"]
    qry = [r for r in rows if r["split"] == "test"]
    xi = np.stack([emb_by_id[r["filepath"]] for r in idx]).astype(np.float64)
    xq = np.stack([emb_by_id[r["filepath"]] for r in qry]).astype(np.float64)
    xi /= np.linalg.norm(xi, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    order = np.argsort(-(xq @ xi.T), axis=1, kind="stable")[:, : max(ks)]
    occ = {}
    for r in idx:
        occ[r[column]] = occ.get(r[column], 0) + 1
    out = {}
    for N in ks:
        per, lab_of = [], []
        for q, o in zip(qry, order, strict=True):
            n = min(N, occ[q[column]])
            per.append(sum(idx[j][column] == q[column] for j in o[:n]) / n)
            lab_of.append(q[column])
        by = {}
        for p, lab in zip(per, lab_of, strict=True):
            by.setdefault(lab, []).append(p)
        out[N] = (sum(per) / len(per), sum(sum(v) / len(v) for v in by.values()) / len(by))
    return out


@pytest.fixture(scope="module")
def radbench_rows(radbench_dir):
    with open(radbench_dir / "radbench.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def lite0_by_id(radbench_lite0_npz):
    with np.load(radbench_lite0_npz) as z:
        return dict(zip(z["filepath"].tolist(), z["emb"], strict=True))


def test_radbench_given_embeddings_match_independent_reference(
    radbench_dir, radbench_lite0_npz, radbench_rows, lite0_by_id, tmp_path
):
    out = tmp_path / "run"
    args = [
        "evaluate",
        str(radbench_dir / "radbench.csv"),
        "--embeddings",
        str(radbench_lite0_npz),
        "--out",
        str(out),
        "--index-fractions",
        "0.1,1",
        "--seeds",
        "2",
        "--quality-sample",
        "400",
        "--map",
        "none",
        "--no-probe",
        "--gallery",
        "4",
        "--no-progress",
    ]
    for c in COLUMNS:
        args += ["--label-column", c]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["counts"]["index"] == sum(r["split"] == "train" for r in radbench_rows)
    assert m["counts"]["queries"] == sum(r["split"] == "test" for r in radbench_rows)
    for col in COLUMNS:
        ref = _reference(radbench_rows, lite0_by_id, col)
        for k, (micro, macro) in ref.items():
            assert m["precision_at_k"][col]["micro"][str(k)] == pytest.approx(micro, abs=1e-6)
            assert m["precision_at_k"][col]["macro"][str(k)] == pytest.approx(macro, abs=1e-6)
        assert m["absent_from_index"][col]["queries"] == 0
    # the published baseline of RadBench's README (EfficientNet-Lite0)
    assert m["precision_at_k"]["label"]["micro"]["1"] == pytest.approx(0.712, abs=0.01)
    assert m["precision_at_k"]["anatomy"]["micro"]["1"] > 0.99
    with open(out / "per_dataset.csv") as fh:
        assert len({r["dataset"] for r in csv.DictReader(fh)}) == 7
    assert (out / "report.html").stat().st_size > 50_000


def test_radbench_model_path_embeds_once_and_reuses_cache(
    radbench_dir, radbench_rows, lite0_by_id, tmp_path
):
    """``--model`` on a 60-row subset: 52 rows come from a seeded cache, 8 are really
    encoded (and must equal the session cache's vectors); the second run encodes
    nothing and gives the same numbers as ``--embeddings``."""
    from radsearch.encoders import get_config
    from radsearch.evaluate.embeddings import cache_dir_for, seed_cache

    rng = np.random.default_rng(0)
    pick = []
    for split, n in (("train", 40), ("test", 20)):
        rows = [r for r in radbench_rows if r["split"] == split]
        pick += [rows[i] for i in rng.choice(len(rows), n, replace=False)]
    sub = tmp_path / "subset.csv"
    with open(sub, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(radbench_rows[0]))
        w.writeheader()
        w.writerows(pick)
    cache = tmp_path / "cache"
    work = cache_dir_for(cache, get_config("efficientnet-lite0"), radbench_dir)
    fresh = [r["filepath"] for r in pick[::8]]  # 8 rows left to encode for real
    seeded = [r["filepath"] for r in pick if r["filepath"] not in fresh]
    seed_cache(
        work, get_config("efficientnet-lite0"), seeded, np.stack([lite0_by_id[i] for i in seeded])
    )

    base = [
        "evaluate",
        str(sub),
        "--root",
        str(radbench_dir),
        "--label-column",
        "label",
        "--label-column",
        "modality",
        *NO_ANALYSES,
        "--gallery",
        "2",
        "--no-progress",
    ]
    model = ["--model", "efficientnet-lite0", "--cache-dir", str(cache)]
    assert main([*base, *model, "--out", str(tmp_path / "a"), "--workers", "0"]) == 0
    shards = sorted(work.glob("shard-*.npz"))
    assert len(shards) == 2
    with np.load(shards[-1]) as z:
        got = dict(zip(z["ids"].tolist(), z["vectors"], strict=True))
    assert sorted(got) == sorted(fresh)
    for i in fresh:
        np.testing.assert_allclose(got[i], lite0_by_id[i], atol=2e-4)
    mtimes = [p.stat().st_mtime_ns for p in shards]
    assert main([*base, *model, "--out", str(tmp_path / "b")]) == 0
    assert [p.stat().st_mtime_ns for p in sorted(work.glob("shard-*.npz"))] == mtimes
    np.savez(
        tmp_path / "sub.npz",
        emb=np.stack([lite0_by_id[r["filepath"]] for r in pick]),
        filepath=np.asarray([r["filepath"] for r in pick]),
    )
    assert (
        main(base + ["--embeddings", str(tmp_path / "sub.npz"), "--out", str(tmp_path / "c")]) == 0
    )
    ms = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in "abc"]
    assert (
        ms[0]["encoder"]["name"] == "efficientnet-lite0" and ms[0]["encoder"]["source"] == "model"
    )
    for col in ("label", "modality"):
        for k in ("1", "5", "10"):
            assert ms[0]["precision_at_k"][col]["micro"][k] == pytest.approx(
                ms[2]["precision_at_k"][col]["micro"][k], abs=1e-6
            )
            assert (
                ms[1]["precision_at_k"][col]["micro"][k] == ms[0]["precision_at_k"][col]["micro"][k]
            )
