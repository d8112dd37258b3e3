"""``tune`` and ``evaluate`` agree: one metric (tune scores through the evaluate
protocol), one vote (search's suggestion is evaluate's kNN prediction), one
embedding cache (the second command embeds nothing again)."""

from __future__ import annotations

import csv
import json

import numpy as np

from eval_helpers import ONLY_PK
from radsearch.cli import main


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _table_with_empty_labels_and_ties(tmp_path):
    """CSV + .npz: some index and val rows have an empty label, and many vectors occur
    twice (exactly tied scores)."""
    from radsearch.io.sources import iter_source

    rng = np.random.default_rng(7)
    d = 12
    centres = rng.standard_normal((3, d)) * 2
    rows, vecs = [], []
    for i in range(160):
        lab = f"c{i % 3}"
        split = "train" if i < 110 else ("val" if i < 145 else "test")
        if i % 11 == 0:
            lab = ""  # unlabelled: evaluate leaves such queries out
        rows.append({"filepath": f"img{i}.png", "label": lab, "split": split})
        v = centres[i % 3] + rng.standard_normal(d) * np.linspace(3, 0.3, d)
        vecs.append(vecs[-1] if i % 4 == 1 else v)  # duplicates: tied neighbours
    _write_csv(tmp_path / "m.csv", rows)
    refs = list(iter_source(tmp_path / "m.csv"))
    np.savez(tmp_path / "e.npz", emb=_unit(vecs), filepath=np.asarray([r.id for r in refs]))
    return tmp_path / "m.csv", tmp_path / "e.npz"


def _evaluate(csv_path, npz, out, *extra):
    argv = ["evaluate", str(csv_path), "--embeddings", str(npz), "--query-split", "val"]
    assert main([*argv, "--out", str(out), *extra, *ONLY_PK]) == 0
    return json.loads((out / "metrics.json").read_text())["precision_at_k"]["label"]


def test_tune_objective_equals_evaluate_figure(tmp_path):
    csv_path, npz = _table_with_empty_labels_and_ties(tmp_path)
    best = tmp_path / "best.json"
    # 35 val queries: too few for the robust objective to keep any step, so the older
    # objective chooses the recipe whose figures are compared
    argv = ["tune", str(csv_path), "--embeddings", str(npz), "--grid", "quick", "--quiet"]
    assert main([*argv, "--objective", "p1-macro", "--out", str(best)]) == 0
    spec = json.loads(best.read_text())
    assert spec["steps"], "the test needs a recipe that beats plain kNN"
    assert spec["chosen_on"]["objective"] == "p1-macro"
    got = spec["val_metrics"]
    want = _evaluate(csv_path, npz, tmp_path / "ev", "--recipe", str(best))
    plain = spec["val_metrics_plain"]
    want_plain = _evaluate(csv_path, npz, tmp_path / "ev-plain")
    for k in ("1", "3", "5", "10"):
        for avg in ("micro", "macro"):
            assert abs(got[f"p@{k}_{avg}"] - want[avg][k]) < 1e-9, (k, avg)
            assert abs(plain[f"p@{k}_{avg}"] - want_plain[avg][k]) < 1e-9, (k, avg)
    # the unlabelled val rows are not scored (evaluate leaves them out too)
    assert got["queries"] == sum(1 for i in range(110, 145) if i % 11) == 31


def test_search_suggestion_is_evaluate_knn_vote_on_ties():
    """A 2:2 tie among 5 hits goes to the tied label ranked nearest, in ``search``
    (what serve shows) and in evaluate's kNN classification alike, even where the
    other tied label has the larger summed score."""
    from radsearch.evaluate.analyses import neighbours, scratch_index
    from radsearch.evaluate.protocol import column_metrics
    from radsearch.io.items import ItemRef
    from radsearch.search import search_vectors

    d = 8
    cos = [0.9, 0.89, 0.88, 0.2, 0.1]  # x, y, y, x, z: x is nearest, y sums more
    labels = ["x", "y", "y", "x", "z"]
    vecs = []
    for j, c in enumerate(cos):
        v = np.zeros(d)
        v[0], v[j + 1] = c, np.sqrt(1 - c * c)
        vecs.append(v)
    vecs = np.asarray(vecs, np.float32)
    refs = [ItemRef(f"r{j}", f"r{j}", metadata={"label": lab}) for j, lab in enumerate(labels)]
    index = scratch_index(vecs, refs)
    q = np.eye(d, dtype=np.float32)[:1]
    (res,) = search_vectors(index, q, k=5)
    assert [h.metadata["label"] for h in res.hits] == labels
    assert res.suggestion["value"] == "x" and res.suggestion["votes"] == 2
    _, rows = neighbours(index, q, 5)
    cm = column_metrics("label", rows, ["x"], labels)
    assert cm.vocab[int(cm.predictions[5][0])] == "x"


def _pattern_csv(pattern_folder, tmp_path):
    rows = []
    for n, p in enumerate(sorted(pattern_folder.rglob("*.png"))):
        split = "val" if n % 4 == 0 else "train"
        rows.append({"filepath": str(p), "label": p.parent.name, "split": split})
    _write_csv(tmp_path / "patterns.csv", rows)
    return tmp_path / "patterns.csv"


def test_tune_after_evaluate_reuses_the_embedding_cache(pattern_folder, tmp_path, monkeypatch):
    import radsearch.encoders as encoders

    csv_path = _pattern_csv(pattern_folder, tmp_path)
    cache = tmp_path / "cache"
    loads = []
    real = encoders.create_encoder

    def counting(*a, **kw):
        loads.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(encoders, "create_encoder", counting)
    model = ["--model", "efficientnet-lite0", "--cache-dir", str(cache)]
    argv = [
        "evaluate",
        str(csv_path),
        *model,
        "--query-split",
        "val",
        "--out",
        str(tmp_path / "ev"),
    ]
    assert main([*argv, "--workers", "0", *ONLY_PK]) == 0
    assert len(loads) == 1  # evaluate embedded the 12 images
    shards = sorted(cache.rglob("shard-*.npz"))
    argv = ["tune", str(csv_path), *model, "--grid", "quick", "--quiet", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "best.json")]) == 0
    assert len(loads) == 1  # tune found every vector in the cache: no model, no encoding
    assert sorted(cache.rglob("shard-*.npz")) == shards
    spec = json.loads((tmp_path / "best.json").read_text())
    assert spec["chosen_on"]["model"] == "efficientnet-lite0"
    assert spec["chosen_on"]["queries"] == 3 and spec["chosen_on"]["index_rows"] == 9
