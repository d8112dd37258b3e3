"""Index directory: round trip, incremental add, removal, atomic commits, refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from radsearch.errors import IndexFormatError, RadsearchError
from radsearch.index import Index
from radsearch.index.core import MANIFEST
from radsearch.io.items import ItemRef
from radsearch.search import majority_vote, search_vectors

DIM = 1280


def unit(rng, n, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def refs(n, start=0, **meta):
    out = []
    for i in range(start, start + n):
        m = {"label": f"L{i % 3}", "patient_id": f"P{i // 2}"}
        m.update(meta)
        out.append(ItemRef(id=f"img{i}.png", source=f"/data/img{i}.png", metadata=m))
    return out


@pytest.fixture
def small_index(tmp_path):
    rng = np.random.default_rng(0)
    vecs = unit(rng, 30)
    index = Index.create(tmp_path / "idx", "efficientnet-lite0")
    assert index.add(refs(30), vecs) == 30
    index.save()
    return tmp_path / "idx", vecs


def test_round_trip_manifest_and_alignment(small_index):
    path, vecs = small_index
    index = Index.open(path)
    m = json.loads((path / MANIFEST).read_text())
    assert m["count"] == 30 and m["dim"] == DIM and m["encoder"]["name"] == "efficientnet-lite0"
    assert len(m["encoder"]["hash"]) == 16 and m["metric"] == "inner_product"
    assert {"radsearch", "faiss", "torch"} <= set(m["versions"])
    assert index.items.column("id").to_pylist()[7] == "img7.png"
    np.testing.assert_allclose(np.asarray(index.embeddings), vecs)
    # every vector finds itself first, with its own metadata
    res = search_vectors(index, vecs[[3, 17]], k=3)
    assert [r.hits[0].id for r in res] == ["img3.png", "img17.png"]
    assert res[0].hits[0].metadata["label"] == "L0"
    assert res[0].hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_add_is_incremental_and_skips_existing_ids(small_index):
    path, vecs = small_index
    index = Index.open(path)
    rng = np.random.default_rng(1)
    batch = unit(rng, 10)
    added = index.add(refs(10, start=25), batch)
    assert added == 5  # img25..img29 already there: their (new) vectors are ignored
    index.save()
    again = Index.open(path)
    assert again.count == 35
    assert search_vectors(again, batch[[5]], k=1)[0].hits[0].id == "img30.png"
    np.testing.assert_allclose(np.asarray(again.embeddings)[25], vecs[25])


def test_remove_by_id_keeps_rows_aligned(small_index):
    path, vecs = small_index
    index = Index.open(path)
    assert index.remove(["img0.png", "img5.png", "nope"]) == 2
    index.save()
    index = Index.open(path)
    assert index.count == 28 and index.item("img5.png") is None
    hit = search_vectors(index, vecs[[6]], k=1)[0].hits[0]
    assert hit.id == "img6.png" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_metadata_filter_and_one_per_patient(small_index):
    path, vecs = small_index
    index = Index.open(path)
    res = search_vectors(index, vecs[[0]], k=5, where={"label": "L1"})[0]
    assert len(res.hits) == 5 and all(h.metadata["label"] == "L1" for h in res.hits)
    res = search_vectors(index, vecs[[0]], k=5, where={"label": "L1,L2"})[0]
    assert {h.metadata["label"] for h in res.hits} <= {"L1", "L2"}
    # patient P0 owns img0 and img1; make img1 the nearest neighbour of img0's query
    q = vecs[[0]] + vecs[[1]]
    q /= np.linalg.norm(q)
    plain = search_vectors(index, q, k=4)[0]
    assert {h.id for h in plain.hits[:2]} == {"img0.png", "img1.png"}
    dedup = search_vectors(index, q, k=4, one_per_patient=True)[0]
    pids = [h.metadata["patient_id"] for h in dedup.hits]
    assert len(dedup.hits) == 4 and len(set(pids)) == 4
    with pytest.raises(RadsearchError, match="filter column 'nope'"):
        search_vectors(index, vecs[[0]], k=5, where={"nope": "x"})


def test_majority_vote_counts_then_breaks_ties_by_score():
    from radsearch.search import Hit

    hits = [
        Hit(1, 0.9, "a", "", {"label": "x"}),
        Hit(2, 0.8, "b", "", {"label": "y"}),
        Hit(3, 0.7, "c", "", {"label": "y"}),
        Hit(4, 0.6, "d", "", {"label": ""}),
    ]
    v = majority_vote(hits, "label")
    assert v == {"column": "label", "value": "y", "votes": 2, "share": round(2 / 3, 4)}
    tie = majority_vote(hits[:2] + [Hit(3, 0.1, "e", "", {"label": "x"}), hits[2]], "label")
    assert tie["value"] == "y"  # 2 votes each: y's summed score 1.5 beats x's 1.0
    assert majority_vote([], "label") is None


def test_interrupted_commit_rolls_forward_and_stale_stage_is_discarded(small_index):
    path, vecs = small_index
    index = Index.open(path)
    index.add(refs(2, start=100), unit(np.random.default_rng(2), 2))
    # simulate a crash after the stage was renamed to .commit but before files moved
    stage = path / ".next"
    stage.mkdir()
    import pyarrow.parquet as pq

    pq.write_table(index.items, stage / "items.parquet")
    np.save(stage / "embeddings.npy", np.asarray(index.embeddings))
    index.store.save(stage)
    manifest = dict(index.manifest, count=32)
    (stage / MANIFEST).write_text(json.dumps(manifest))
    os.replace(stage, path / ".commit")
    reopened = Index.open(path)
    assert reopened.count == 32 and not (path / ".commit").exists()
    # a stage that never reached .commit is thrown away; the index stays as it was
    (path / ".next").mkdir()
    (path / ".next" / MANIFEST).write_text("{garbage")
    assert Index.open(path).count == 32 and not (path / ".next").exists()


def test_failed_save_leaves_previous_index_intact(small_index, monkeypatch):
    path, vecs = small_index
    before = (path / MANIFEST).read_text()
    index = Index.open(path)
    index.add(refs(3, start=200), unit(np.random.default_rng(3), 3))

    def boom(folder):
        raise OSError("disk full")

    monkeypatch.setattr(index.store, "save", boom)
    with pytest.raises(OSError):
        index.save()
    assert (path / MANIFEST).read_text() == before
    assert Index.open(path).count == 30


def test_damaged_or_mismatched_indexes_are_refused(small_index, tmp_path):
    path, vecs = small_index
    with pytest.raises(IndexFormatError, match="no such index"):
        Index.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="not a radsearch index"):
        Index.open(tmp_path / "empty")
    m = json.loads((path / MANIFEST).read_text())
    m["count"] = 31
    (path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="parts disagree"):
        Index.open(path)
    m["count"] = 30
    (path / MANIFEST).write_text(json.dumps(m))
    index = Index.open(path)
    with pytest.raises(IndexFormatError, match="refusing to use it with 'efficientnet-lite2'"):
        index.check_model("efficientnet-lite2")
    index.check_model("efficientnet-lite0")
    with pytest.raises(IndexFormatError, match="already exists"):
        Index.create(path, "efficientnet-lite0")
    with pytest.raises(IndexFormatError, match="dim"):
        index.add(refs(1, start=300), np.zeros((1, 7), np.float32))


def test_metadata_keys_that_collide_with_hit_fields_are_kept_apart(tmp_path):
    index = Index.create(tmp_path / "idx", "efficientnet-lite0")
    ref = ItemRef(id="a.png", source="/data/a.png", metadata={"source": "dataset X", "score": "5"})
    index.add([ref], unit(np.random.default_rng(4), 1))
    hit = search_vectors(index, np.asarray(index.embeddings), k=1)[0].hits[0]
    assert hit.source == "/data/a.png" and hit.metadata["meta_source"] == "dataset X"
    assert hit.to_dict()["source"] == "/data/a.png" and hit.to_dict()["meta_score"] == "5"
