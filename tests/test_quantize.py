"""The int8 variant of EfficientNet-Lite0: static ONNX quantisation on real ONNX Runtime,
calibrated on a tiny image folder; its vectors, its place in an index, its fallback."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from conftest import make_pattern
from radsearch.encoders import create_encoder
from radsearch.encoders import quantize as q
from radsearch.errors import IndexFormatError
from radsearch.io.sources import iter_source

INT8 = "efficientnet-lite0-int8"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """``images/<label>/<n>.png``: three labels x five images (module-wide)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("int8") / "images"
    for kind in ("stripes", "rings", "blob"):
        (root / kind).mkdir(parents=True)
        for n in range(5):
            Image.fromarray(make_pattern(kind, size=128, seed=n)).save(root / kind / f"{n}.png")
    return root


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """Quantised models go to a fresh cache folder, not the user's."""
    old = os.environ.get("RADSEARCH_CACHE")
    os.environ["RADSEARCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield q.cache_dir()
    if old is None:
        os.environ.pop("RADSEARCH_CACHE")
    else:
        os.environ["RADSEARCH_CACHE"] = old


@pytest.fixture(scope="module")
def int8(folder, model_cache, one_torch_thread):
    enc = create_encoder(INT8)
    q.ensure_int8(enc, list(iter_source(folder, label_from_folder=True)))
    return enc


def test_int8_variant_has_its_own_hash():
    from radsearch.encoders import get_config

    fp32, int8 = get_config("efficientnet-lite0"), get_config(INT8)
    assert int8.hash != fp32.hash and int8.extra["quantize"] == "int8"
    assert (int8.dim, int8.input_size, int8.mean) == (fp32.dim, fp32.input_size, fp32.mean)


def test_calibration_batches_share_one_shape():
    for n in (40, 128, 15, 17):
        reader = q._Batches(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1))
        chunks = iter(reader.get_next, None)
        shapes = [c["x"].shape for c in chunks]
        assert len(set(shapes)) == 1 and sum(s[0] for s in shapes) == n
    assert shapes == [(1, 1, 1, 1)] * 17  # a prime over 16: one image per batch


def test_int8_model_is_quantised_close_to_fp32_and_cached(int8, folder, model_cache):
    import onnx

    info = int8.runtime_info
    assert info["runtime"] == "onnx-int8" and info["int8_cosine_min"] >= q.INT8_COSINE
    assert info["calibration"]["images"] == 15 and info["calibration"]["method"] == "percentile"
    graph = onnx.load_from_string(int8.int8_model).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    # the stem stays fp32 (float_layers), later convolutions are quantised
    conv_inputs = {n.name: n.input[1] for n in graph.node if n.op_type == "Conv"}
    assert not conv_inputs["/_conv_stem/Conv"].endswith("DequantizeLinear_Output")
    assert conv_inputs["/_conv_head/Conv"].endswith("DequantizeLinear_Output")
    assert list(model_cache.glob(f"{int8.config.hash}-*.onnx"))

    from radsearch.io.items import read_image

    images = [read_image(p) for p in sorted(folder.rglob("*.png"))]
    fp32 = create_encoder("efficientnet-lite0").encode_images(images)
    got = int8.encode_images(images)
    cos = (fp32 * got).sum(axis=1)
    assert cos.min() >= q.INT8_COSINE and cos.min() < 1 - 1e-4  # close, yet not fp32
    # deterministic calibration: the same refs give the same model, from the cache
    again = create_encoder(INT8)
    q.ensure_int8(again, list(iter_source(folder, label_from_folder=True)))
    assert again.int8_model == int8.int8_model
    assert again.runtime_info["calibration"] == info["calibration"]


def test_index_built_with_int8_records_it_and_searches_with_it(folder, model_cache, tmp_path):
    from radsearch.index import Index
    from radsearch.io.items import read_image
    from radsearch.pipeline import build_index, open_or_create

    refs = list(iter_source(folder, label_from_folder=True))
    out = tmp_path / "idx"
    build_index(refs, out, model=INT8, batch_size=8, workers=0, progress=False, regions=False)
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["encoder"]["int8"]
    assert manifest["encoder"]["name"] == INT8 and rec["file"] == q.INT8_FILE
    assert rec["runtime"] == "onnx-int8" and rec["images"] == len(refs)
    assert (out / q.INT8_FILE).read_bytes()

    index = Index.open(out)
    enc = index.encoder()
    assert enc.runtime_info["runtime"] == "onnx-int8"
    assert enc.int8_model == (out / q.INT8_FILE).read_bytes()
    hit = index.search([read_image(folder / "rings" / "2.png")], k=1)[0].hits[0]
    assert hit.id == "rings/2.png" and hit.score > 0.9999  # queries run the index's model
    with pytest.raises(IndexFormatError, match="efficientnet-lite0-int8.*refusing"):
        open_or_create(out, "efficientnet-lite0", None)  # fp32 vectors never join it
    with pytest.raises(IndexFormatError, match="refusing"):
        Index.open(out).check_model("efficientnet-lite0")

    (out / q.INT8_FILE).unlink()
    with pytest.raises(IndexFormatError, match=f"int8 model {q.INT8_FILE}, which is missing"):
        Index.open(out).encoder()


def test_cli_indexes_with_int8_and_refuses_fp32_queries(folder, model_cache, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "idx"
    # a fresh model cache: the quantiser runs in the child (no cache hit)
    env = {**os.environ, "RADSEARCH_THREADS": "1", "RADSEARCH_CACHE": str(tmp_path / "c")}
    cli = [sys.executable, "-m", "radsearch.cli"]
    index = [*cli, "index", str(folder), "--out", str(out), "--no-progress", "--no-regions"]
    proc = subprocess.run([*index, "--model", INT8], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    # one result line: the quantiser's own progress prints never reach stdout
    assert proc.stdout.splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith("indexed 15 new item(s)") and INT8 in proc.stdout
    assert list((tmp_path / "c" / "onnx").glob("*.onnx"))
    args = [str(folder / "blob" / "0.png"), "--model", "efficientnet-lite0"]
    proc = subprocess.run(
        [*cli, "search", str(out), *args], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("radsearch: error:") and "refusing" in proc.stderr


def _unfaithful(encoder) -> bytes:
    """A real model that runs but is not the encoder: the fp32 export with its head
    convolution's weights replaced by noise."""
    import onnx
    from onnx import numpy_helper

    from radsearch.encoders.accel import export_onnx

    m = onnx.load_from_string(export_onnx(q.eager_module(encoder), encoder.config.input_size))
    head = next(n for n in m.graph.node if n.name == "/_conv_head/Conv")
    for init in m.graph.initializer:
        if init.name == head.input[1]:
            w = numpy_helper.to_array(init)
            noise = np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(noise, init.name))
    return m.SerializeToString()


def test_unfaithful_int8_model_falls_back_to_fp32_with_a_warning(folder, one_torch_thread):
    from radsearch.io.items import read_image

    enc = create_encoder(INT8)
    with pytest.warns(UserWarning, match="int8 vectors differ from fp32"):
        q.install_int8(enc, _unfaithful(enc), {"images": 0, "method": "minmax"})
    info = enc.runtime_info
    assert info["runtime"] in ("onnx", "torch") and info["requested"] == "int8"
    assert info["int8_rejected"]["int8_cosine_min"] < q.INT8_COSINE
    images = [read_image(p) for p in sorted(folder.rglob("*.png"))[:4]]
    fp32 = create_encoder("efficientnet-lite0").encode_images(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = enc.encode_images(images)
    assert (fp32 * got).sum(axis=1).min() >= 1 - 1e-3  # the fp32 vectors, not the noise


def test_fp32_encoders_are_left_alone(folder):
    enc = create_encoder("efficientnet-lite0")
    q.ensure_int8(enc, list(iter_source(folder)))
    assert getattr(enc, "int8_model", None) is None and not getattr(enc, "runtime_info", None)


def test_evaluate_calibrates_int8_on_the_index_split_only(folder, model_cache, tmp_path):
    from radsearch.evaluate.embeddings import compute_embeddings

    refs = list(iter_source(folder, label_from_folder=True))
    index_refs = [r for r in refs if not r.id.startswith("blob/")]
    direct = create_encoder(INT8)
    q.ensure_int8(direct, index_refs)  # the model calibrated on the index split alone
    before = set(model_cache.glob("*.onnx"))
    _, kept, vecs, failures, _ = compute_embeddings(
        refs,
        INT8,
        tmp_path / "cache",
        folder,
        workers=0,
        progress=False,
        calibration_refs=index_refs,
    )
    assert len(kept) == len(refs) and not failures
    assert set(model_cache.glob("*.onnx")) == before  # no other calibration was made
    row = [r.id for r in kept].index("blob/0.png")
    from radsearch.io.items import read_image

    np.testing.assert_allclose(
        vecs[row], direct.encode_images([read_image(folder / "blob" / "0.png")])[0], atol=1e-5
    )


def test_serve_on_an_int8_index_runs_its_int8_model(folder, model_cache, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from radsearch.pipeline import build_index
    from radsearch.serve import create_app

    refs = list(iter_source(folder, label_from_folder=True))
    out = tmp_path / "idx"
    build_index(refs, out, model=INT8, batch_size=8, workers=0, progress=False, regions=False)
    # an fp32 runtime asked for: the index's own int8 model still encodes the queries
    app = create_app(out, runtime="onnx")
    client = TestClient(app, base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["encoder"] == INT8 and info["runtime"] == "onnx-int8"
    png = (folder / "stripes" / "3.png").read_bytes()
    resp = client.post("/api/search", files={"file": ("q.png", png, "image/png")}, data={"k": "1"})
    hit = resp.json()["hits"][0]
    assert resp.status_code == 200 and hit["id"] == "stripes/3.png" and hit["score"] > 0.9999


def test_an_uncalibrated_int8_variant_refuses_to_encode():
    """Its vectors would be fp32 ones under the int8 hash: refused, naming the model."""
    from radsearch.encoders import create_encoder
    from radsearch.errors import EncoderError

    encoder = create_encoder(INT8)
    with pytest.raises(EncoderError, match=f"{INT8}.*not calibrated"):
        encoder.encode(np.zeros((1, 3, 224, 224), np.float32))
