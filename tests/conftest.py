"""Shared fixtures: RadBench location, a cached EfficientNet-Lite0 embedding of all of
RadBench (computed once, resumable, reused by every RadBench test), and small
synthetic image folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RADBENCH = REPO.parent / "shared" / "radbench"
CACHE = Path(os.environ.get("RADSEARCH_TEST_CACHE", REPO / ".cache" / "tests"))


def radbench_available() -> bool:
    return (RADBENCH / "radbench.csv").exists()


@pytest.fixture(scope="session")
def radbench_dir() -> Path:
    if not radbench_available():
        pytest.skip("RadBench not present at ../shared/radbench")
    return RADBENCH


def _csv_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture(scope="session")
def radbench_refs(radbench_dir):
    from radsearch.io.sources import iter_source

    return list(iter_source(radbench_dir / "radbench.csv"))


@pytest.fixture(scope="session")
def radbench_lite0(radbench_dir, radbench_refs):
    """``(refs, vectors)`` for every RadBench row with efficientnet-lite0, cached as
    ``.npz`` (arrays ``emb`` and ``filepath``: the layout ``evaluate`` accepts)."""
    from radsearch.embed import embed_refs
    from radsearch.encoders import create_encoder

    encoder = create_encoder("efficientnet-lite0")
    tag = f"radbench-{_csv_digest(radbench_dir / 'radbench.csv')}-lite0-{encoder.config.hash}"
    npz = CACHE / f"{tag}.npz"
    if not npz.exists():
        result = embed_refs(radbench_refs, encoder, CACHE / f"{tag}.work", batch_size=64)
        assert not result.failures, result.failures[:3]
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = npz.with_suffix(".tmp.npz")
        np.savez(tmp, emb=result.vectors, filepath=np.asarray([r.id for r in result.refs]))
        os.replace(tmp, npz)
    with np.load(npz) as z:
        emb, paths = z["emb"], z["filepath"].tolist()
    by_id = {r.id: r for r in radbench_refs}
    return [by_id[p] for p in paths], emb


@pytest.fixture(scope="session")
def radbench_lite0_npz(radbench_lite0, radbench_dir) -> Path:
    return next(CACHE.glob(f"radbench-{_csv_digest(radbench_dir / 'radbench.csv')}-lite0-*.npz"))


@pytest.fixture(scope="session")
def radbench_index(radbench_lite0, tmp_path_factory):
    """An index of RadBench's train rows (efficientnet-lite0), built from the cache."""
    from radsearch.index import Index

    refs, emb = radbench_lite0
    train = [i for i, r in enumerate(refs) if r.metadata.get("split") == "train"]
    path = tmp_path_factory.mktemp("radbench") / "index"
    index = Index.create(path, "efficientnet-lite0")
    index.add([refs[i] for i in train], emb[train])
    index.save()
    return Index.open(path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: OpenMP spin-waiting across busy cores makes
    2 threads up to 100x slower than 1."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_pattern(kind: str, size: int = 96, seed: int = 0) -> np.ndarray:
    """Distinct synthetic greyscale patterns (uint8) that a CNN tells apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == "stripes":
        img = 0.5 + 0.5 * np.sin(2 * np.pi * (6 + seed % 3) * xx)
    elif kind == "rings":
        img = 0.5 + 0.5 * np.sin(2 * np.pi * (5 + seed % 3) * np.hypot(xx - 0.5, yy - 0.5))
    elif kind == "blob":
        c = 0.4 + 0.2 * rng.random(2)
        img = np.exp(-(((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / 0.02))
    else:
        raise ValueError(kind)
    img = img + 0.03 * rng.standard_normal(img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def pattern_folder(tmp_path) -> Path:
    """``<tmp>/images/<label>/<n>.png``: three labels x four images."""
    from PIL import Image

    root = tmp_path / "images"
    for kind in ("stripes", "rings", "blob"):
        (root / kind).mkdir(parents=True)
        for n in range(4):
            Image.fromarray(make_pattern(kind, seed=n)).save(root / kind / f"{n}.png")
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test instead of hanging."""
    import socket

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
