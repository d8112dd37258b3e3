"""Batched serving: concurrent ``/api/search`` requests are embedded together and get
the hits of the one-at-a-time path (same ids in the same order, scores within 1e-5),
each with its own options; ``batch_max=1`` never batches."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import make_pattern  # noqa: E402
from serve_helpers import KINDS, LiveServer, pattern_index  # noqa: E402

QUERIES = [(kind, seed) for seed in (20, 21, 22, 23) for kind in KINDS]  # 12 queries


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return pattern_index(
        tmp_path_factory.mktemp("batch"), lambda kind, n: {"label": kind, "patient_id": f"P{n % 2}"}
    )


def _options(i: int) -> dict:
    """Each query its own k, filter and per-patient setting."""
    return {
        "k": 3 + i % 4,
        "where": ["label=rings,blob"] if i % 3 == 0 else None,
        "one_per_patient": i % 5 == 0,
    }


def _png(kind: str, seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_pattern(kind, seed=seed)).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, i: int, body: bytes, gate: threading.Barrier | None = None) -> dict:
    """Query ``i`` with its own options (``_options``), after ``gate`` if given."""
    opts = _options(i)
    data = {"k": str(opts["k"]), "one_per_patient": str(opts["one_per_patient"]).lower()}
    if opts["where"]:
        data["where"] = opts["where"]
    with httpx.Client(timeout=120) as http:
        if gate is not None:
            gate.wait()
        r = http.post(url + "/api/search", files={"file": (f"q{i}.png", body)}, data=data)
    assert r.status_code == 200, r.text
    return r.json()


def _together(url: str, bodies: list[bytes]) -> list[dict]:
    """Post every query at the same moment (one thread and connection each)."""
    gate = threading.Barrier(len(bodies))
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda i: _post(url, i, bodies[i], gate), range(len(bodies))))


def test_batched_hits_equal_one_at_a_time(index_dir):
    from PIL import Image

    from radsearch.index import Index
    from radsearch.search import search_index
    from radsearch.serve import create_app

    bodies = [_png(kind, seed) for kind, seed in QUERIES]
    index = Index.open(index_dir)
    expected = []
    for i, body in enumerate(bodies):
        pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        opts = _options(i)
        where = {"label": "rings,blob"} if opts["where"] else None
        expected.append(
            search_index(
                index, [pixels], k=opts["k"], where=where, one_per_patient=opts["one_per_patient"]
            )[0]
        )
    app = create_app(index_dir, batch_max=8, batch_window=0.05)
    with LiveServer(app) as url:
        for _ in range(3):  # the first round may find the worker idle
            answers = _together(url, bodies)
            if app.state.ctx.batcher.largest_batch >= 2:
                break
    assert app.state.ctx.batcher.largest_batch >= 2, "no two queries were ever embedded together"
    for want, got in zip(expected, answers, strict=True):
        assert [h["id"] for h in got["hits"]] == [h.id for h in want.hits]
        for h, w in zip(got["hits"], want.hits, strict=True):
            assert h["score"] == pytest.approx(w.score, abs=1e-5)
        assert got["suggestion"] == want.suggestion


def test_batch_max_one_never_batches(index_dir):
    from radsearch.serve import create_app

    app = create_app(index_dir, batch_max=1)
    with LiveServer(app) as url:
        _together(url, [_png(kind, seed) for kind, seed in QUERIES[:6]])
    assert app.state.ctx.batcher.largest_batch == 1


def test_a_bad_filter_fails_only_its_own_query(index_dir):
    from radsearch.index import Index
    from radsearch.serve.batcher import QueryBatcher

    index = Index.open(index_dir)
    batcher = QueryBatcher(index, max_batch=4, window=0.2)
    pixels = make_pattern("rings", seed=3)[:, :, None].repeat(3, axis=2)
    out = {}

    def run(name, where):
        try:
            out[name] = batcher.search(pixels, name, k=2, where=where)
        except Exception as exc:  # noqa: BLE001
            out[name] = exc

    threads = [
        threading.Thread(target=run, args=("good", None)),
        threading.Thread(target=run, args=("bad", {"nosuchcolumn": "1"})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out["good"].hits) == 2 and "nosuchcolumn" in str(out["bad"])


def test_onnx_runtime_serves_the_same_hits(index_dir):
    """``--runtime onnx``: the query encoder runs on ONNX Runtime; hits are those of the
    torch path (``radsearch search``), scores within the runtime's 1e-3 tolerance, and
    batched (two batches side by side) equals one at a time within 1e-5."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from radsearch.index import Index
    from radsearch.search import search_index
    from radsearch.serve import create_app

    bodies = [_png(kind, seed) for kind, seed in QUERIES[:6]]
    index = Index.open(index_dir)
    # two cores: two batch workers, each forward pass on its own ORT session thread
    app = create_app(index_dir, runtime="onnx", batch_max=8, batch_window=0.05, threads=2)
    with LiveServer(app) as url:
        info = httpx.get(url + "/api/info").json()
        assert info["runtime"] == "onnx" and info["batching"]["workers"] == 2
        alone = [_post(url, i, body) for i, body in enumerate(bodies)]  # one at a time
        for _ in range(3):
            together = _together(url, bodies)
            if app.state.ctx.batcher.largest_batch >= 2:
                break
    assert app.state.ctx.batcher.largest_batch >= 2
    for i, (body, one, many) in enumerate(zip(bodies, alone, together, strict=True)):
        opts = _options(i)
        where = {"label": "rings,blob"} if opts["where"] else None
        pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        torch_hits = search_index(
            index, [pixels], k=opts["k"], where=where, one_per_patient=opts["one_per_patient"]
        )[0].hits
        assert [h["id"] for h in one["hits"]] == [h.id for h in torch_hits]
        for h, w in zip(one["hits"], torch_hits, strict=True):
            assert h["score"] == pytest.approx(w.score, abs=1e-3)
        assert [h["id"] for h in many["hits"]] == [h["id"] for h in one["hits"]]
        for h, w in zip(many["hits"], one["hits"], strict=True):
            assert h["score"] == pytest.approx(w["score"], abs=1e-5)


def test_queries_waiting_together_are_embedded_in_one_batch(index_dir):
    """While the encoder is busy, queries queue; the next batch takes all of them at once
    (counted by ``batch_sizes``, no timing) and each gets its one-at-a-time answer."""
    from radsearch.index import Index
    from radsearch.search import search_index
    from radsearch.serve.batcher import QueryBatcher

    index = Index.open(index_dir)
    batcher = QueryBatcher(index, max_batch=8, window=0.0, workers=1)
    images = [make_pattern(kind, seed=seed)[:, :, None].repeat(3, axis=2) for kind, seed in QUERIES]
    out: dict[int, object] = {}

    def run(i):
        where = {"label": "rings,blob"} if _options(i)["where"] else None
        out[i] = batcher.search(images[i], f"q{i}", k=3, where=where)

    batcher.lock.acquire()  # the encoder is busy: the first query waits for it, dequeued
    first = threading.Thread(target=run, args=(0,))
    first.start()
    queued = batcher._queue
    _until(lambda: queued.unfinished_tasks == 1 and queued.qsize() == 0)  # put, then taken
    rest = [threading.Thread(target=run, args=(i,)) for i in range(1, 6)]
    for t in rest:
        t.start()
    _until(lambda: queued.qsize() == 5)
    batcher.lock.release()
    for t in [first, *rest]:
        t.join()
    assert batcher.batch_sizes == {1: 1, 5: 1}
    for i in range(6):
        where = {"label": "rings,blob"} if _options(i)["where"] else None
        want = search_index(index, [images[i]], k=3, where=where)[0]
        assert [h.id for h in out[i].hits] == [h.id for h in want.hits]
        for h, w in zip(out[i].hits, want.hits, strict=True):
            assert h.score == pytest.approx(w.score, abs=1e-5)


def _until(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
