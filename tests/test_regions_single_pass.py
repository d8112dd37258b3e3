"""An index build with region features runs the encoder once per image: the region map
comes out of the embedding pass (``Encoder.encode_with_grid``), and only items whose
vectors came from elsewhere (a killed run's shards) get a region-only pass. The codes
are those the region-only pass gives."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def passes(monkeypatch):
    """Items seen by each kind of forward pass of the encoder."""
    from radsearch.encoders.base import Encoder

    seen = {"joint": 0, "vectors": 0, "grids": 0}
    calls = {
        "joint": Encoder.encode_with_grid,
        "vectors": Encoder.encode,
        "grids": Encoder.feature_grid,
    }
    names = {"joint": "encode_with_grid", "vectors": "encode", "grids": "feature_grid"}

    def counting(kind):
        def run(self, batch, *args, **kwargs):
            seen[kind] += len(batch)
            return calls[kind](self, batch, *args, **kwargs)

        return run

    for kind, name in names.items():
        monkeypatch.setattr(Encoder, name, counting(kind))
    return seen


def _assert_codes_of_the_region_only_pass(index):
    """The stored codes and sizes are what the region-only pass gives for the index's
    items with its fitted codec (codes within one sq8 step: float noise)."""
    from radsearch.encoders import create_encoder
    from radsearch.regions.extract import extract_codes
    from radsearch.regions.features import require

    store = require(index)
    assert len(store) == index.count
    refs = index.refs(range(index.count))
    encoder = create_encoder("efficientnet-lite0")
    codes, sizes = extract_codes(require(index), refs, encoder, workers=0)
    diff = np.abs(np.asarray(store.codes).astype(np.int32) - codes.astype(np.int32))
    assert diff.max() <= 1
    np.testing.assert_array_equal(store.sizes, sizes)
    return refs, encoder


def test_build_embeds_and_extracts_regions_in_one_pass(pattern_folder, passes, one_torch_thread):
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    refs = list(iter_source(pattern_folder))
    report = build_index(refs, pattern_folder.parent / "index", progress=False, workers=0)
    assert report.added == len(refs) == 12
    assert passes == {"joint": 12, "vectors": 0, "grids": 0}
    refs, encoder = _assert_codes_of_the_region_only_pass(report.index)
    # and the vectors are those of the plain embedding pass
    from radsearch.io.items import load_pixels

    want = encoder.encode(encoder.collate([encoder.preprocess(load_pixels(r)) for r in refs]))
    assert (want * np.asarray(report.index.embeddings)).sum(1).min() > 0.9999


def test_resumed_build_gives_region_codes_to_the_items_of_earlier_shards(
    pattern_folder, passes, one_torch_thread
):
    from radsearch.embed import embed_refs
    from radsearch.encoders import create_encoder
    from radsearch.index.commit import WORK
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    refs = list(iter_source(pattern_folder))
    out = pattern_folder.parent / "index"
    encoder = create_encoder("efficientnet-lite0")
    # a killed run left the vectors of the first five items in the work directory
    embed_refs(refs[:5], encoder, out / WORK / encoder.config.hash, progress=False, workers=0)
    passes.update(joint=0, vectors=0, grids=0)
    report = build_index(refs, out, progress=False, workers=0)
    assert report.added == 12
    assert passes == {"joint": 7, "vectors": 0, "grids": 5}
    _assert_codes_of_the_region_only_pass(report.index)


def test_joint_model_on_onnx_matches_the_eager_vector_and_map(pattern_folder, one_torch_thread):
    from PIL import Image

    from radsearch.encoders import create_encoder
    from radsearch.encoders.accel import accelerate_joint

    encoder = create_encoder("efficientnet-lite0")
    images = [
        np.asarray(Image.open(p).convert("RGB")) for p in sorted(pattern_folder.rglob("*.png"))
    ]
    batch = encoder.collate([encoder.preprocess(img) for img in images[:6]])
    vectors, grids = encoder.encode(batch), encoder.feature_grid(batch, "b10")
    assert accelerate_joint(encoder, "b10", runtime="onnx")
    assert "b10" in encoder._joint_fast
    fast_vectors, fast_grids = encoder.encode_with_grid(batch, "b10")
    assert (vectors * fast_vectors).sum(1).min() > 0.999
    a, b = grids.reshape(-1, grids.shape[-1]), fast_grids.reshape(-1, grids.shape[-1])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    assert fast_grids.shape == grids.shape and cos.min() > 0.999


def test_quantised_variant_keeps_its_own_vectors():
    from radsearch.encoders import create_encoder
    from radsearch.encoders.accel import accelerate_joint

    encoder = create_encoder("efficientnet-lite0-int8")
    assert not accelerate_joint(encoder, "b10", runtime="onnx")
    assert not encoder.__dict__.get("_joint_fast")
