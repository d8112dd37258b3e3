"""The Milvus store passes the FAISS store's search tests on Milvus Lite, and one
integration test against a real Milvus server (PyPI ``milvus``, 2.3.x)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import test_index as ti  # noqa: E402
from radsearch.index import Index  # noqa: E402
from radsearch.search import search_vectors  # noqa: E402

# the index-directory search tests of test_index, run again on Milvus (fixture below)
from test_index import (  # noqa: E402,F401
    test_add_is_incremental_and_skips_existing_ids,
    test_failed_save_leaves_previous_index_intact,
    test_metadata_filter_and_one_per_patient,
    test_remove_by_id_keeps_rows_aligned,
    test_round_trip_manifest_and_alignment,
)


@pytest.fixture(scope="module")
def lite_uri(tmp_path_factory):
    from radsearch.index.milvus_store import close_client

    uri = str(tmp_path_factory.mktemp("milvus") / "lite.db")
    yield uri
    close_client(uri)


@pytest.fixture
def small_index(tmp_path, lite_uri):
    rng = np.random.default_rng(0)
    vecs = ti.unit(rng, 30)
    store = {"kind": "milvus", "uri": lite_uri}
    index = Index.create(tmp_path / "idx", "efficientnet-lite0", store=store)
    assert index.add(ti.refs(30), vecs) == 30
    index.save()
    return tmp_path / "idx", vecs


def test_metadata_lives_in_milvus_and_large_row_filters(small_index, monkeypatch):
    from radsearch.index import milvus_store

    path, vecs = small_index
    index = Index.open(path)
    assert index.manifest["store"]["kind"] == "milvus" and (path / "milvus.json").exists()
    got = index.store.query('label == "L1" and patient_id == "P2"', fields=["row", "item_id"])
    assert sorted((g["row"], g["item_id"]) for g in got) == [(4, "img4.png")]
    # row filters too large for a 'row in [...]' expression: over-fetch and filter
    monkeypatch.setattr(milvus_store, "EXPR_ROWS", 0)
    res = search_vectors(index, vecs[[0]], k=4, where={"label": "L2"})[0]
    assert len(res.hits) == 4 and {h.metadata["label"] for h in res.hits} == {"L2"}


def test_missing_collection_is_refused(small_index):
    from radsearch.errors import IndexFormatError

    path, _ = small_index
    index = Index.open(path)
    index.store.client.drop_collection(index.store.name)
    with pytest.raises(IndexFormatError, match="not found"):
        Index.open(path)


def _ports_free(*ports) -> bool:
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    milvus = pytest.importorskip("milvus", reason="PyPI 'milvus' (embedded server) not installed")
    if not _ports_free(2379, 9091, 19530):
        pytest.skip("Milvus server ports 2379/9091/19530 are taken (another server is running)")
    server = milvus.default_server
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"the Milvus server from PyPI 'milvus' did not start: {exc}")
    yield f"http://127.0.0.1:{server.listen_port}"
    server.stop()


@pytest.mark.slow
def test_real_milvus_server_round_trip(milvus_server, tmp_path):
    from radsearch.index.milvus_store import close_client

    rng = np.random.default_rng(0)
    vecs = ti.unit(rng, 40)
    store = {"kind": "milvus", "uri": milvus_server, "index_type": "FLAT"}
    index = Index.create(tmp_path / "srv", "efficientnet-lite0", store=store)
    index.add(ti.refs(40), vecs)
    index.save()
    index = Index.open(tmp_path / "srv")
    assert index.store.ntotal == 40
    res = search_vectors(index, vecs[[3, 17]], k=3)
    assert [r.hits[0].id for r in res] == ["img3.png", "img17.png"]
    assert res[0].hits[0].score == pytest.approx(1.0, abs=1e-5)
    res = search_vectors(index, vecs[[0]], k=5, where={"label": "L1"})[0]
    assert len(res.hits) == 5 and all(h.metadata["label"] == "L1" for h in res.hits)
    dedup = search_vectors(index, vecs[[0]], k=6, one_per_patient=True)[0]
    assert len({h.metadata["patient_id"] for h in dedup.hits}) == 6
    assert index.remove(["img3.png"]) == 1
    index.save()
    again = Index.open(tmp_path / "srv")
    assert again.count == 39 and search_vectors(again, vecs[[3]], k=1)[0].hits[0].id != "img3.png"
    got = again.store.query('label == "L2"', fields=["row"])
    assert len(got) == sum(1 for i in range(40) if i != 3 and i % 3 == 2)
    again.store.client.drop_collection(again.store.name)
    close_client(milvus_server)
