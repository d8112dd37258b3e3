"""The Ray engine (Ray Data pipeline, actor pool) against the local engine: the same
shards, failures and, through ``build_index``, an identical index."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    for k, v in {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_BACKEND_LOG_LEVEL": "fatal",
    }.items():
        os.environ.setdefault(k, v)
    import ray

    from radsearch.distributed import init_ray

    started = not ray.is_initialized()
    init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def folder_with_bad_file(pattern_folder):
    (pattern_folder / "blob" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return pattern_folder


def _shards(work):
    out = {}
    for p in sorted(work.glob("shard-*.npz")):
        with np.load(p) as z:
            out[p.name] = (z["ids"].tolist(), z["vectors"].copy())
    return out


@pytest.mark.slow
def test_ray_engine_equals_local_engine(local_ray, folder_with_bad_file, tmp_path):
    from radsearch.distributed import embed_refs_ray
    from radsearch.embed import embed_refs
    from radsearch.encoders import create_encoder
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    refs = list(iter_source(folder_with_bad_file, label_from_folder=True))
    enc = create_encoder("efficientnet-lite0")
    kw = {"batch_size": 4, "shard_size": 4, "progress": False, "runtime": "torch"}
    a = embed_refs(refs, enc, tmp_path / "local", workers=0, **kw)
    b = embed_refs_ray(refs, enc, tmp_path / "ray", num_actors=2, **kw)
    assert [r.id for r in a.refs] == [r.id for r in b.refs] and len(a.refs) == 12
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
    assert a.failures == b.failures and a.failures[0]["id"] == "blob/broken.png"
    sa, sb = _shards(tmp_path / "local"), _shards(tmp_path / "ray")
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name][0] == sb[name][0]
        np.testing.assert_allclose(sa[name][1], sb[name][1], atol=1e-6)
    # end to end through build_index: identical ids, order and vectors
    li = build_index(refs, tmp_path / "idx-local", progress=False, batch_size=4, engine="local")
    ri = build_index(refs, tmp_path / "idx-ray", progress=False, batch_size=4, engine="ray")
    assert li.index.items.column("id").to_pylist() == ri.index.items.column("id").to_pylist()
    np.testing.assert_allclose(
        np.asarray(li.index.embeddings), np.asarray(ri.index.embeddings), atol=1e-6
    )
    assert len(ri.failures) == 1 and (tmp_path / "idx-ray" / "failures.jsonl").exists()
    # a re-run has nothing left to embed
    again = build_index(refs, tmp_path / "idx-ray", progress=False, engine="ray")
    assert again.added == 0 and again.skipped_existing == 12


@pytest.mark.slow
def test_ray_engine_collates_fusion_items_like_local(
    local_ray, folder_with_bad_file, tmp_path, monkeypatch
):
    """A fusion encoder's items are tuples (one input per member): the Ray actor collates
    them through the encoder, so every readable item is indexed, as by the local engine."""
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    monkeypatch.setenv("RADSEARCH_RUNTIME", "torch")
    refs = list(iter_source(folder_with_bad_file, label_from_folder=True))
    model = "fusion:efficientnet-lite0+efficientnet-lite2"
    kw = {"model": model, "progress": False, "batch_size": 4}
    li = build_index(refs, tmp_path / "idx-local", engine="local", workers=0, **kw)
    ri = build_index(refs, tmp_path / "idx-ray", engine="ray", **kw)
    assert li.added == ri.added == 12
    assert [f["id"] for f in ri.failures] == [f["id"] for f in li.failures] == ["blob/broken.png"]
    assert li.index.items.column("id").to_pylist() == ri.index.items.column("id").to_pylist()
    a, b = np.asarray(li.index.embeddings), np.asarray(ri.index.embeddings)
    assert a.shape == b.shape == (12, 2560)
    assert float(np.abs(a - b).max()) <= 1e-5
