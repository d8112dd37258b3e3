"""Embedding extraction: resume after a crash, unreadable files, the ONNX runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radsearch.embed import embed_refs
from radsearch.encoders import Encoder, create_encoder
from radsearch.io.sources import iter_source


class Flaky(Encoder):
    """The real encoder, counting what it encodes and dying on the n-th batch."""

    def __init__(self, inner: Encoder, die_on: int | None = None):
        self.config, self.device, self.module = inner.config, inner.device, inner.module
        self.die_on, self.calls, self.encoded = die_on, 0, 0

    def encode(self, batch):
        self.calls += 1
        if self.calls == self.die_on:
            raise KeyboardInterrupt("killed")
        self.encoded += len(batch)
        return super().encode(batch)


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet-lite0")


def test_resume_after_kill_encodes_only_pending(pattern_folder, tmp_path, lite0):
    refs = list(iter_source(pattern_folder, label_from_folder=True))
    kw = {"batch_size": 4, "shard_size": 4, "progress": False, "runtime": "torch"}
    first = Flaky(lite0, die_on=3)
    with pytest.raises(KeyboardInterrupt):
        embed_refs(refs, first, tmp_path / "work", workers=1, **kw)
    assert first.encoded == 8 and len(list((tmp_path / "work").glob("shard-*.npz"))) == 2
    assert not list((tmp_path / "work").glob("*.tmp"))
    second = Flaky(lite0)
    resumed = embed_refs(refs, second, tmp_path / "work", workers=1, **kw)
    assert second.encoded == 4  # only the items the killed run never finished
    once = embed_refs(refs, Flaky(lite0), tmp_path / "once", workers=0, **kw)
    assert [r.id for r in resumed.refs] == [r.id for r in once.refs] == [r.id for r in refs]
    np.testing.assert_allclose(resumed.vectors, once.vectors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(resumed.vectors, axis=1), 1, atol=1e-5)
    third = Flaky(lite0)
    embed_refs(refs, third, tmp_path / "work", **kw)
    assert third.encoded == 0


def test_unreadable_files_are_skipped_with_reason(pattern_folder, tmp_path, lite0):
    (pattern_folder / "blob" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (pattern_folder / "rings" / "empty.jpg").write_bytes(b"")
    refs = list(iter_source(pattern_folder, label_from_folder=True))
    enc = Flaky(lite0)
    res = embed_refs(refs, enc, tmp_path / "w", batch_size=4, progress=False, runtime="torch")
    bad = {f["id"]: f["reason"] for f in res.failures}
    assert set(bad) == {"blob/corrupt.png", "rings/empty.jpg"} and all(bad.values())
    assert len(res.refs) == 12 and res.vectors.shape == (12, 1280) and enc.encoded == 12
    lines = [json.loads(x) for x in (tmp_path / "w" / "failures.jsonl").read_text().splitlines()]
    assert {x["id"] for x in lines} == set(bad)
    again = Flaky(lite0)
    res2 = embed_refs(refs, again, tmp_path / "w", batch_size=4, progress=False)
    assert again.encoded == 0 and len(res2.failures) == 2  # failures are not retried


def test_onnx_runtime_matches_torch(pattern_folder, lite0):
    pytest.importorskip("onnxruntime")
    import pickle

    from radsearch.encoders.accel import accelerate
    from radsearch.io.items import read_image

    images = [read_image(p) for p in sorted(pattern_folder.rglob("*.png"))[:6]]
    ref = lite0.encode_images(images)
    fast = accelerate(create_encoder("efficientnet-lite0"), "onnx")
    assert fast.runtime_info["runtime"] == "onnx" and fast.runtime_info["cosine_min"] >= 0.999
    got = fast.encode_images(images)
    assert (ref * got).sum(axis=1).min() >= 1 - 1e-3
    clone = pickle.loads(pickle.dumps(fast.module))  # travels to Ray actors
    import torch

    x = torch.from_numpy(np.stack([fast.preprocess(im) for im in images]))
    np.testing.assert_allclose(clone(x).numpy(), fast.module(x).numpy(), atol=1e-5)


def test_onnx_lanes_give_the_vectors_of_one_session(pattern_folder, monkeypatch):
    """A batch spread over single-threaded lanes, one image per ORT call, gives what
    one session running the whole batch gives; a lone image takes the wide session."""
    pytest.importorskip("onnxruntime")
    import torch

    from radsearch.encoders import accel
    from radsearch.io.items import read_image

    encoder = create_encoder("efficientnet-lite0")
    images = [read_image(p) for p in sorted(pattern_folder.rglob("*.png"))[:5]]
    x = torch.from_numpy(np.stack([encoder.preprocess(im) for im in images]))
    model = accel.export_onnx(encoder.module, encoder.config.input_size)
    whole = accel.OnnxModule(model, threads=1)
    whole.micro_batch = len(images)  # one call for the batch
    lanes = accel.OnnxModule(model, threads=2)
    ran, run = [], accel.OnnxModule._run

    def counting(self, session, arr):
        ran.append((len(arr), session))
        return run(self, session, arr)

    monkeypatch.setattr(accel.OnnxModule, "_run", counting)
    want = whole(x).numpy()
    assert [n for n, _ in ran] == [5]
    ran.clear()
    np.testing.assert_allclose(lanes(x).numpy(), want, atol=1e-5)
    assert [n for n, _ in ran] == [1] * 5  # one image per call ...
    used = {id(s) for _, s in ran}
    assert lanes._session is None and 1 <= len(used) <= 2  # ... on the two lanes only
    for _, s in ran:
        assert s.get_session_options().intra_op_num_threads == 1
    ran.clear()
    np.testing.assert_allclose(lanes(x[:1]).numpy(), want[:1], atol=1e-5)
    assert [(n, s) for n, s in ran] == [(1, lanes._session)]
    assert lanes.session.get_session_options().intra_op_num_threads == 2
