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


def test_majority_vote_counts_then_breaks_ties_by_rank():
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
    assert tie["value"] == "x"  # 2 votes each: x's first hit ranks nearest (evaluate's rule)
    tie = majority_vote([hits[1], hits[0], Hit(3, 0.65, "e", "", {"label": "x"}), hits[2]], "label")
    assert tie["value"] == "y" and tie["votes"] == 2  # y's first hit is nearest now
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


def test_rows_remember_how_they_were_read_nifti_window(tmp_path):
    """A NIfTI indexed with the lung window comes back from ``Index.ref`` with that window,
    and the pixels decoded from the ref are the lung-window rendering, not the automatic."""
    from io_fixtures import write_nifti
    from radsearch.io.items import load_pixels
    from radsearch.io.nifti import parse_window, read_nifti_slice
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    hu = np.linspace(-1000, 1000, 24 * 20 * 3).reshape(24, 20, 3).astype(np.int16)
    vol = write_nifti(tmp_path / "ct.nii.gz", hu)
    refs = list(iter_source(vol, nifti_window="lung"))
    build_index(refs, tmp_path / "idx", workers=0, progress=False)
    index = Index.open(tmp_path / "idx")
    lung = parse_window("lung")
    assert index.count == 3
    for row in range(3):
        ref = index.ref(row)
        assert ref.window == lung and ref.frame == row and ref.kind == "nifti"
        assert ref.id == f"ct.nii.gz#slice={row}" and ref.source == str(vol)
        pixels = load_pixels(ref)
        assert np.array_equal(pixels, read_nifti_slice(vol, row, window=lung))
        assert not np.array_equal(pixels, read_nifti_slice(vol, row))  # not the auto window
    assert "_window_low" not in index.items.column_names  # metadata table unchanged
    assert [r.window for r in index.refs([2, 0])] == [lung, lung]


def test_index_without_read_columns_still_opens_and_parses_frames(small_index):
    """An index written before the read columns existed: frames come from the id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, _ = small_index
    table = pa.table(
        {
            "id": ["a.dcm#frame=2", "v.nii#slice=5", "b.png"],
            "source": ["/d/a.dcm", "/d/v.nii", "/d/b.png"],
            "label": ["x", "y", "z"],
        }
    )
    vecs = np.asarray(Index.open(path, mmap=False).embeddings)[:3]
    pq.write_table(table, path / "items.parquet")
    m = json.loads((path / MANIFEST).read_text())
    m["count"] = 3
    (path / MANIFEST).write_text(json.dumps(m))
    np.save(path / "embeddings.npy", vecs)
    from radsearch.index.faiss_store import FaissStore

    store = FaissStore(DIM)
    store.build(vecs)
    store.save(path)
    old = Index.open(path)
    assert [r.frame for r in old.refs([0, 1, 2])] == [2, 5, None]
    assert old.ref(2) == ItemRef("b.png", "/d/b.png") and old.ref(2).metadata == {"label": "z"}
    assert old.ref(0).window is None
    old.save()  # rewritten with the columns; reads the same
    assert [r.frame for r in Index.open(path).refs([0, 1, 2])] == [2, 5, None]
