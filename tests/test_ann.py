"""ANN stores: auto choice, build-time recall (recomputed here), query-time knobs, and
the index's search behaviour (filters, one-per-patient) on approximate stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

import test_index as ti
from radsearch.errors import RadsearchError
from radsearch.index import Index, ann
from radsearch.index.core import MANIFEST
from radsearch.search import search_vectors

# the index-directory search tests of test_index, run again on ANN stores (below)
from test_index import (  # noqa: F401
    test_add_is_incremental_and_skips_existing_ids,
    test_metadata_filter_and_one_per_patient,
    test_remove_by_id_keeps_rows_aligned,
    test_round_trip_manifest_and_alignment,
)


@pytest.fixture(params=["hnsw", "ivf-flat"])
def small_index(request, tmp_path):
    rng = np.random.default_rng(0)
    vecs = ti.unit(rng, 30)
    index = Index.create(tmp_path / "idx", "efficientnet-lite0", store={"type": request.param})
    assert index.add(ti.refs(30), vecs) == 30
    index.save()
    return tmp_path / "idx", vecs


def clustered(n, dim=1280, labels=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((labels, dim)) / np.sqrt(dim)
    lab = rng.integers(0, labels, n)
    x = centres[lab] + 0.7 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, lab


def item_refs(labels):
    from radsearch.io.items import ItemRef

    return [
        ItemRef(
            id=f"v{i}",
            source=f"/v{i}.png",
            metadata={"label": f"L{lab}", "patient_id": f"P{i // 3}"},
        )
        for i, lab in enumerate(labels)
    ]


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq", "hnsw-sq8", "flat-fp16"])
def test_manifest_recall_matches_recomputation(tmp_path, kind):
    x, lab = clustered(2500)
    spec = {"type": kind, "m": 16, "nprobe": 8} if kind == "ivf-pq" else {"type": kind}  # fast
    index = Index.create(tmp_path / kind, "efficientnet-lite0", store=spec)
    index.add(item_refs(lab), x)
    index.save()
    m = json.loads((tmp_path / kind / MANIFEST).read_text())["store"]
    assert m["built"]["type"] == kind and 0 < m["recall_at_10"] <= 1
    # recompute from the saved index alone: held-out rows, own row excluded, vs numpy exact
    index = Index.open(tmp_path / kind)
    emb = np.asarray(index.embeddings)
    rows = ann.holdout_rows(index.count, m["recall_queries"], m["recall_seed"])
    assert len(rows) == m["recall_queries"] == 125
    _, got = index.store.search(emb[rows], 11)
    sims = emb[rows] @ emb.T
    sims[np.arange(len(rows)), rows] = -np.inf
    exact = np.argsort(-sims, axis=1)[:, :10]
    hits = sum(
        len(set([r for r in g if r != own][:10]) & set(e))
        for g, e, own in zip(got, exact, rows, strict=True)
    )
    assert hits / (10 * len(rows)) == pytest.approx(m["recall_at_10"], abs=1e-4)
    if kind != "ivf-pq":
        assert m["recall_at_10"] >= 0.9


def test_auto_policy_by_size_dim_and_budget():
    assert ann.choose(5_000, 1280)["type"] == "flat"
    assert ann.choose(100_000, 512)["type"] == "hnsw"
    assert ann.choose(1_600_000, 512, ann.parse_bytes("1G"))["type"] == "ivf-sq8"
    assert ann.choose(1_600_000, 512, ann.parse_bytes("8G"))["type"] == "ivf-flat"
    pq = ann.choose(10_000_000, 512, ann.parse_bytes("1G"))
    assert pq["type"] == "ivf-pq" and 512 % pq["m"] == 0
    assert ann.estimate_bytes(pq, 10_000_000, 512) <= ann.parse_bytes("1G")
    with pytest.raises(RadsearchError, match="no index type fits"):
        ann.choose(10_000_000, 512, ann.parse_bytes("10M"))
    assert ann.parse_bytes("512M") == 512 * 1024**2 and ann.parse_bytes("2.5GB") == int(
        2.5 * 1024**3
    )
    with pytest.raises(RadsearchError, match="memory budget"):
        ann.parse_bytes("lots")
    with pytest.raises(RadsearchError, match="not supported"):
        ann.resolve({"type": "lsh"}, 10, 8)


def test_auto_resolves_and_records_choice(tmp_path):
    x, lab = clustered(3000, dim=1280)
    index = Index.create(
        tmp_path / "a", "efficientnet-lite0", store={"type": "auto", "memory_budget": "8M"}
    )
    index.add(item_refs(lab), x)
    index.save()
    spec = Index.open(tmp_path / "a").manifest["store"]
    # 3000 x 1280 floats need 15 MB: an 8 MB budget forces compressed codes
    assert spec["type"] == "auto" and spec["built"]["type"] in {"hnsw-sq8", "ivf-sq8", "ivf-pq"}
    assert ann.estimate_bytes(spec["built"], 3000, 1280) <= 8 * 1024**2
    assert "recall_at_10" in spec


def test_query_time_knobs_and_filters_on_ivf(tmp_path, monkeypatch):
    from radsearch.index import faiss_store

    x, lab = clustered(3000)
    index = Index.create(
        tmp_path / "ivf", "efficientnet-lite0", store={"type": "ivf-flat", "nlist": 32}
    )
    index.add(item_refs(lab), x)
    q = x[:20] + 0.01
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    index.store.set_search_params(nprobe=32)  # every list: exact
    _, full = index.store.search(q, 10)
    np.testing.assert_array_equal(full, exact)
    index.store.set_search_params(nprobe=1)
    _, one = index.store.search(q, 10)
    assert ann.recall_at_k(one, exact) < ann.recall_at_k(full, exact)
    # filters: exact scan for small row sets, ID selector (+ fallback) for large ones
    for limit in (faiss_store.EXACT_FILTER_ROWS, 0):
        monkeypatch.setattr(faiss_store, "EXACT_FILTER_ROWS", limit)
        res = search_vectors(index, q[:3], k=10, where={"label": "L1"})
        assert all(
            len(r.hits) == 10 and {h.metadata["label"] for h in r.hits} == {"L1"} for r in res
        )
        res = search_vectors(index, q[:3], k=10, one_per_patient=True)
        for r in res:
            pids = [h.metadata["patient_id"] for h in r.hits]
            assert len(pids) == 10 == len(set(pids))


def test_cli_index_type_prints_recall_and_search_knobs(pattern_folder, tmp_path, capsys):
    from radsearch.cli import main

    out = tmp_path / "idx"
    rc = main(
        [
            "index",
            str(pattern_folder),
            "--out",
            str(out),
            "--label-from-folder",
            "--no-progress",
            "--index-type",
            "hnsw",
            "--runtime",
            "torch",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "recall@10 vs exact" in text and "hnsw" in text
    spec = json.loads((out / MANIFEST).read_text())["store"]
    assert spec["type"] == "hnsw" and f"{spec['recall_at_10']:.4f}" in text
    query = str(next((pattern_folder / "rings").iterdir()))
    assert main(["search", str(out), query, "-k", "3", "--ef-search", "8", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
    assert len(hits) == 3 and hits[0]["label"] == "rings"
