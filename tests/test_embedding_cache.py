"""One embedding cache: ``radsearch index`` takes the vectors ``evaluate`` (and ``tune``)
cached for the same files under the same encoder, and encodes only the rest."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_pattern
from radsearch.cli import main

EVAL = ["--no-report", "--no-probe", "--map", "none", "--quality-sample", "0"]
EVAL += ["--index-fractions", "none", "--no-progress", "--workers", "0"]
KINDS = ("stripes", "rings", "blob")


@pytest.fixture
def encoded(monkeypatch):
    """Counts the items the encoder's forward pass sees (``Encoder.encode``, or
    ``Encoder.encode_with_grid`` when the vectors come with region maps)."""
    from radsearch.encoders.base import Encoder

    seen = []
    forward, joint = Encoder.encode, Encoder.encode_with_grid

    def counting(self, batch):
        seen.append(len(batch))
        return forward(self, batch)

    def counting_joint(self, batch, layer=None):
        before = len(seen)
        out = joint(self, batch, layer)
        if len(seen) == before:  # not already counted through ``encode``
            seen.append(len(batch))
        return out

    monkeypatch.setattr(Encoder, "encode", counting)
    monkeypatch.setattr(Encoder, "encode_with_grid", counting_joint)
    return seen


def _dataset(root):
    rows = []
    for kind in KINDS:
        for n in range(3):
            name = f"{kind}{n}.png"
            Image.fromarray(make_pattern(kind, seed=n)).save(root / name)
            rows.append([name, kind, "test" if n == 2 else "train"])
    with open(root / "data.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["filepath", "label", "split"], *rows])
    return [r[0] for r in rows]


def _vectors(path):
    from radsearch.index import Index

    index = Index.open(path)
    ids = index.items.column("id").to_pylist()
    return index, dict(zip(ids, np.asarray(index.embeddings), strict=True))


def _evaluate(tmp_path):
    args = ["evaluate", str(tmp_path / "data.csv"), "--model", "efficientnet-lite0"]
    args += ["--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache")]
    return main([*args, *EVAL])


def _index(tmp_path, out, *extra):
    args = ["index", str(tmp_path / "data.csv"), "--out", str(tmp_path / out)]
    return main([*args, "--cache-dir", str(tmp_path / "cache"), "--workers", "0", *extra])


def test_index_reuses_what_evaluate_cached(tmp_path, capsys, encoded, one_torch_thread):
    names = _dataset(tmp_path)
    assert _evaluate(tmp_path) == 0
    assert sum(encoded) == len(names)  # evaluate encoded every row once
    encoded.clear()
    assert _index(tmp_path, "idx", "--no-progress") == 0
    assert encoded == []  # the encoder's forward never ran: every vector came from the cache
    assert f"{len(names)} vector(s) reused from the embedding cache" in capsys.readouterr().out
    index, reused = _vectors(tmp_path / "idx")
    assert sorted(reused) == sorted(names)
    assert index.manifest.get("regions")  # the region pass still ran (a pass of its own)
    from radsearch.embed import _load_done
    from radsearch.encoders import get_config
    from radsearch.evaluate.embeddings import cache_dir_for

    done, _ = _load_done(
        cache_dir_for(tmp_path / "cache", get_config("efficientnet-lite0"), tmp_path)
    )
    for name in names:
        np.testing.assert_array_equal(reused[name], done[name])
    # and they are the vectors a fresh encoding gives
    assert _index(tmp_path, "fresh", "--no-progress", "--no-cache") == 0
    assert sum(encoded) == len(names)
    _, fresh = _vectors(tmp_path / "fresh")
    for name in names:
        np.testing.assert_allclose(reused[name], fresh[name], atol=1e-5)


def test_a_file_changed_since_is_encoded_again(tmp_path, encoded, one_torch_thread):
    names = _dataset(tmp_path)
    assert _evaluate(tmp_path) == 0
    changed = tmp_path / names[0]
    Image.fromarray(make_pattern("blob", seed=7)).save(changed)
    later = max(p.stat().st_mtime for p in (tmp_path / "cache").rglob("shard-*.npz")) + 10
    os.utime(changed, (later, later))
    encoded.clear()
    assert _index(tmp_path, "idx", "--no-progress", "--no-regions") == 0
    assert sum(encoded) == 1  # only the edited file went through the encoder
    _, got = _vectors(tmp_path / "idx")
    assert _index(tmp_path, "fresh", "--no-progress", "--no-regions", "--no-cache") == 0
    _, fresh = _vectors(tmp_path / "fresh")
    for name in names:  # every vector, reused or not, is what the file encodes to now
        np.testing.assert_allclose(got[name], fresh[name], atol=1e-5)


def test_another_encoder_or_root_reuses_nothing(tmp_path):
    from radsearch.encoders import get_config
    from radsearch.evaluate.embeddings import cache_dir_for, seed_cache, seed_from_cache
    from radsearch.io.sources import iter_source

    names = _dataset(tmp_path)
    refs = list(iter_source(tmp_path / "data.csv"))
    lite0, lite2 = get_config("efficientnet-lite0"), get_config("efficientnet-lite2")
    vecs = np.eye(len(names), lite0.dim, dtype=np.float32)
    seed_cache(cache_dir_for(tmp_path / "cache", lite0, tmp_path), lite0, names, vecs)
    assert seed_from_cache(tmp_path / "w2", lite2, refs, tmp_path / "cache", tmp_path) == 0
    other = tmp_path / "other"
    other.mkdir()
    assert seed_from_cache(tmp_path / "w3", lite0, refs, tmp_path / "cache", other) == 0
    assert seed_from_cache(tmp_path / "w1", lite0, refs, tmp_path / "cache", tmp_path) == len(names)
