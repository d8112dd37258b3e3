"""``radsearch evaluate`` / ``compare`` end to end on a small synthetic dataset."""

from __future__ import annotations

import base64
import csv
import json
import re
from importlib.util import find_spec

import numpy as np
import pytest

from eval_helpers import ONLY_PK
from radsearch.cli import main
from radsearch.errors import RadsearchError
from radsearch.evaluate.runner import EvalOptions, run_evaluation

LABELS = ["a", "b", "c"]
FAST = [
    "--index-fractions",
    "0.5,1",
    "--seeds",
    "2",
    "--quality-sample",
    "120",
    "--map",
    "tsne",
    "--map-sample",
    "60",
    "--gallery",
    "3",
    "--no-progress",
]


def _dataset(tmp_path, n=90, seed=0, absent_label=False):
    """CSV (filepath, split, label, modality, dataset) + row-aligned embeddings with
    label structure; tiny PNGs so the gallery has thumbnails."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (tmp_path / "img").mkdir(exist_ok=True)
    centres = rng.normal(size=(len(LABELS), 16))
    rows, emb = [], []
    for i in range(n):
        lab = LABELS[i % 3]
        split = "test" if i % 5 == 0 else ("val" if i % 7 == 0 else "train")
        if absent_label and split == "test" and i % 2 == 0:
            lab = "d"  # never in the index
        path = f"img/{i:03d}.png"
        Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / path)
        rows.append(
            {
                "filepath": path,
                "split": split,
                "label": lab,
                "modality": "CT" if lab in ("a", "b") else "MR",
                "dataset": f"ds{i % 2}",
            }
        )
        c = centres[LABELS.index(lab)] if lab in LABELS else rng.normal(size=16)
        emb.append(c + 0.9 * rng.normal(size=16))
    csv_path = tmp_path / "data.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    emb = np.asarray(emb, np.float32)
    np.save(tmp_path / "emb.npy", emb)
    return csv_path, rows, emb


def _brute_force_precision(rows, emb, column, K):
    """Independent: numpy cosine kNN + loop-level modified P@k."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    idx = [i for i, r in enumerate(rows) if r["split"] == "train"]
    qry = [i for i, r in enumerate(rows) if r["split"] == "test"]
    sims = x[qry] @ x[idx].T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    occ = {}
    for i in idx:
        occ[rows[i][column]] = occ.get(rows[i][column], 0) + 1
    out = {}
    for N in range(1, K + 1):
        per = []
        for q, o in zip(qry, order, strict=True):
            lab = rows[q][column]
            if lab not in occ:
                continue
            n = min(N, occ[lab])
            per.append(sum(rows[idx[j]][column] == lab for j in o[:n]) / n)
        out[N] = float(np.mean(per))
    return out


def test_evaluate_npy_outputs_and_numbers(tmp_path, capsys):
    csv_path, rows, emb = _dataset(tmp_path)
    out = tmp_path / "run"
    rc = main(
        [
            "evaluate",
            str(csv_path),
            "--embeddings",
            str(tmp_path / "emb.npy"),
            "--label-column",
            "label",
            "--label-column",
            "modality",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    n_index = sum(r["split"] == "train" for r in rows)
    K = min(100, n_index)
    for col in ("label", "modality"):
        pk = m["precision_at_k"][col]
        assert list(pk["micro"]) == [str(k) for k in range(1, K + 1)]
        ref = _brute_force_precision(rows, emb, col, K)
        for k in (1, 3, 5, 10, K):
            assert pk["micro"][str(k)] == pytest.approx(ref[k], abs=1e-6)
        assert set(m["knn_classification"][col]) == {"1", "3", "5", "10"}
        assert 0 <= m["linear_probe"][col]["accuracy"] <= 1
        assert (out / f"per_label_{col}.csv").exists()
    assert m["encoder"]["name"].startswith("external:")
    assert m["counts"]["index"] == n_index and m["counts"]["queries"] == sum(
        r["split"] == "test" for r in rows
    )
    assert len(m["dataset"]["hash"]) == 16
    assert m["index_size"]["fractions"] == [0.5, 1.0]
    assert m["embedding_quality"]["label"]["silhouette"] is not None
    assert (
        m["precision_at_k"]["modality"]["micro"]["1"]
        >= m["precision_at_k"]["label"]["micro"]["1"] - 1e-9
    )
    with open(out / "per_dataset.csv") as fh:
        table = list(csv.DictReader(fh))
    assert {t["dataset"] for t in table} == {"ds0", "ds1"}
    html = (out / "report.html").read_text()
    assert 'src="http' not in html and "<link" not in html  # self-contained
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) >= 5 and all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pngs)
    assert "data:image/jpeg;base64," in html  # gallery thumbnails
    assert "label" in capsys.readouterr().out


def test_npz_and_h5_give_the_same_numbers(tmp_path):
    csv_path, rows, emb = _dataset(tmp_path, seed=1)
    order = np.random.default_rng(0).permutation(len(rows))
    np.savez(
        tmp_path / "emb.npz",
        emb=emb[order],
        filepath=np.asarray([rows[i]["filepath"] for i in order]),
    )
    results = []
    files = ["emb.npy", "emb.npz"]
    if find_spec("h5py"):
        import h5py

        with h5py.File(tmp_path / "emb.h5", "w") as f:
            for r, v in zip(rows, emb, strict=True):
                f[r["filepath"]] = v
        files.append("emb.h5")
    for name in files:
        m = run_evaluation(
            EvalOptions(
                csv=str(csv_path),
                out=str(tmp_path / name.replace(".", "_")),
                embeddings=str(tmp_path / name),
                index_fractions=[],
                quality_sample=0,
                map_method="none",
                probe=False,
                report=False,
                progress=False,
            )
        )
        results.append(m["precision_at_k"]["label"])
    for r in results[1:]:
        assert r == results[0]


def test_neighbours_cached_between_runs(tmp_path):
    csv_path, rows, emb = _dataset(tmp_path)
    opts = dict(
        csv=str(csv_path),
        out=str(tmp_path / "o"),
        embeddings=str(tmp_path / "emb.npy"),
        index_fractions=[],
        quality_sample=0,
        map_method="none",
        probe=False,
        report=False,
        progress=False,
    )
    m1 = run_evaluation(EvalOptions(**opts))
    stamp = (tmp_path / "o" / "neighbours.npz").stat().st_mtime_ns
    m2 = run_evaluation(EvalOptions(**opts))
    assert (tmp_path / "o" / "neighbours.npz").stat().st_mtime_ns == stamp
    assert m1["precision_at_k"] == m2["precision_at_k"]


def test_labels_absent_from_index_warn_and_are_reported(tmp_path, capsys):
    csv_path, rows, emb = _dataset(tmp_path, absent_label=True)
    out = tmp_path / "run"
    assert (
        main(
            [
                "evaluate",
                str(csv_path),
                "--embeddings",
                str(tmp_path / "emb.npy"),
                "--out",
                str(out),
                *ONLY_PK,
            ]
        )
        == 0
    )
    assert "absent from the index" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    n_absent = sum(r["label"] == "d" for r in rows)
    assert n_absent > 0
    assert m["absent_from_index"]["label"]["queries"] == n_absent
    assert m["absent_from_index"]["label"]["labels"] == {"d": n_absent}
    assert m["label_counts"]["label"]["queries_scored"] == m["counts"]["queries"] - n_absent


def _bad(tmp_path, capsys, args, pattern):
    with pytest.raises(RadsearchError, match=pattern):
        from radsearch.cli import build_parser

        ns = build_parser().parse_args(args)
        ns.func(ns)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("radsearch: error:") and re.search(pattern, err[-1])


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    csv_path, rows, emb = _dataset(tmp_path)
    base = [
        "evaluate",
        str(csv_path),
        "--out",
        str(tmp_path / "o"),
        *ONLY_PK,
    ]
    npy = ["--embeddings", str(tmp_path / "emb.npy")]
    _bad(tmp_path, capsys, base + npy + ["--label-column", "pathology"], "no column 'pathology'")
    _bad(tmp_path, capsys, base + npy + ["--split-column", "fold"], "no column 'fold'")
    _bad(
        tmp_path,
        capsys,
        base + npy + ["--index-split", "training"],
        "no rows with split='training'",
    )
    _bad(tmp_path, capsys, base + npy + ["--query-split", "holdout"], "empty query set")
    np.save(tmp_path / "short.npy", emb[:-3])
    _bad(
        tmp_path,
        capsys,
        base + ["--embeddings", str(tmp_path / "short.npy")],
        "do not match the CSV",
    )
    nan = emb.copy()
    nan[4, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    _bad(tmp_path, capsys, base + ["--embeddings", str(tmp_path / "nan.npy")], "NaN or inf")
    zero = emb.copy()
    zero[7] = 0
    np.save(tmp_path / "zero.npy", zero)
    _bad(tmp_path, capsys, base + ["--embeddings", str(tmp_path / "zero.npy")], "all-zero")
    np.savez(
        tmp_path / "part.npz", emb=emb[:10], filepath=np.asarray([r["filepath"] for r in rows[:10]])
    )
    _bad(tmp_path, capsys, base + ["--embeddings", str(tmp_path / "part.npz")], "no embedding for")
    np.savez(tmp_path / "noids.npz", emb=emb)
    _bad(
        tmp_path,
        capsys,
        base + ["--embeddings", str(tmp_path / "noids.npz")],
        "needs arrays 'emb' and 'filepath'",
    )
    _bad(tmp_path, capsys, base + npy + ["--index-fractions", "0,2"], "not in")


def test_recipe_is_applied_exactly_as_search_applies_it(tmp_path, capsys):
    """With ``--recipe``, evaluate's neighbours are the hits ``Index.search`` returns
    from a saved index carrying the same recipe."""
    csv_path, rows, emb = _dataset(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps({"steps": {"whiten": {"dim": 8}, "qe": {"k": 2}}}))
    args = [
        "evaluate",
        str(csv_path),
        "--embeddings",
        str(tmp_path / "emb.npy"),
        "--out",
        str(tmp_path / "o"),
        "--recipe",
        str(tmp_path / "r.json"),
        *ONLY_PK,
        "--max-k",
        "10",
    ]
    if find_spec("radsearch.recipe") is None:
        _bad(tmp_path, capsys, args, "no retrieval recipes")
        return
    assert main(args) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["recipe"]["steps"]["whiten"]["dim"] == 8
    from radsearch.index import Index
    from radsearch.io.sources import iter_source
    from radsearch.recipe import Recipe

    refs = list(iter_source(csv_path))
    train = [i for i, r in enumerate(refs) if r.metadata["split"] == "train"]
    test = [i for i, r in enumerate(refs) if r.metadata["split"] == "test"]
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    idx = Index.create(tmp_path / "idx", external_config_for_test(emb.shape[1]))
    idx.add([refs[i] for i in train], x[train])
    idx.set_recipe(Recipe.from_json(tmp_path / "r.json"))
    idx.save()
    idx = Index.open(tmp_path / "idx")
    hits = idx.search(x[test], k=10, suggest=None)
    with np.load(tmp_path / "o" / "neighbours.npz") as z:
        nb = z["rows"]
    train_ids = [refs[i].id for i in train]
    for q, res in enumerate(hits):
        assert [h.id for h in res.hits] == [train_ids[r] for r in nb[q]]
    _bad(tmp_path, capsys, args[:-2] + ["--recipe", str(tmp_path / "missing.json")], "no such file")


def external_config_for_test(dim):
    from radsearch.evaluate.runner import external_config

    return external_config("emb.npy", dim)


def test_compare(tmp_path, capsys):
    csv_path, rows, emb = _dataset(tmp_path)
    rng = np.random.default_rng(5)
    np.save(tmp_path / "noise.npy", rng.normal(size=emb.shape).astype(np.float32))
    for name in ("emb", "noise"):
        assert (
            main(
                [
                    "evaluate",
                    str(csv_path),
                    "--embeddings",
                    str(tmp_path / f"{name}.npy"),
                    "--out",
                    str(tmp_path / name),
                    *ONLY_PK,
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                str(tmp_path / "emb"),
                str(tmp_path / "noise"),
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "emb" in out and "noise" in out
    with open(tmp_path / "cmp" / "compare.csv") as fh:
        table = list(csv.DictReader(fh))
    got = {(t["run"], t["average"]): float(t["P@1"]) for t in table}
    assert got[("emb", "micro")] > got[("noise", "micro")]
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(tmp_path / "missing")]) == 1
