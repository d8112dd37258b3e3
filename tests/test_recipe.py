"""Retrieval recipes: each step's effect on synthetic data, persistence, and identical
hits from search, serve and evaluate's neighbour path (``knn_rows``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radsearch.errors import RadsearchError
from radsearch.recipe import Recipe, fit_whitening, k_reciprocal_distance, load_recipe


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _anisotropic(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.1, d)
    return (rng.standard_normal((n, d)) * scales + 3.0).astype(np.float32)


def _vindex(vectors):
    from radsearch.evaluate.analyses import scratch_index

    return scratch_index(vectors)


# -- whitening -------------------------------------------------------------------------
def test_whitening_equalises_variance():
    x = _anisotropic()
    mean, proj = fit_whitening(x, None, power=1.0, shrinkage=0.0)
    z = (x - mean) @ proj
    var = z.var(axis=0)
    assert np.allclose(z.mean(0), 0, atol=1e-4)
    assert np.allclose(var, 1.0, rtol=0.05)  # raw variances span 1e4 : 1
    raw = x.var(axis=0)
    assert raw.max() / raw.min() > 1e3


def test_whitening_shrinkage_power_and_dim():
    x = _anisotropic()
    _, proj = fit_whitening(x, 4, power=1.0, shrinkage=0.0)
    assert proj.shape == (16, 4)
    m, p_shr = fit_whitening(x, None, power=1.0, shrinkage=1.0)
    v = ((x - m) @ p_shr).var(0)
    assert 1.5 < v.max() / v.min() < 1e4  # shrinkage leaves part of the spread
    m, p0 = fit_whitening(x, None, power=0.0, shrinkage=0.0)
    v0 = ((x - m) @ p0).var(0)
    assert np.isclose(v0.sum(), x.var(0).sum(), rtol=1e-3)  # power 0: rotation only


def test_recipe_keeps_index_dim_and_is_deterministic():
    x = _unit(_anisotropic())
    r1 = Recipe({"whiten": {"dim": 5}}).fit(x)
    r2 = Recipe({"whiten": {"dim": 5}}).fit(x)
    a, b = r1.transform_db(x), r2.transform_db(x)
    assert a.shape == x.shape and np.allclose(a[:, 5:], 0)
    assert np.allclose(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


# -- cluster (local) whitening -----------------------------------------------------------
def test_cluster_step_keeps_neighbours_in_their_cluster():
    rng = np.random.default_rng(1)
    d = 12
    centres = _unit(rng.standard_normal((3, d))) * 8
    x = _unit(np.concatenate([c + rng.standard_normal((100, d)) for c in centres]))
    r = Recipe({"cluster": {"n": 3, "dim": 6}}).fit(x)
    y = r.transform_db(x)
    sims = y @ y.T
    np.fill_diagonal(sims, -9)
    nn = sims.argmax(1)
    assert np.mean(nn // 100 == np.arange(300) // 100) == 1.0
    # within a cluster the local axes are whitened: the block after the tag is centred
    block = y[:100, 3:9]
    assert np.abs(block.mean(0)).max() < 0.1


# -- DBA and QE ------------------------------------------------------------------------
def _planted_cluster(seed=2, d=32):
    rng = np.random.default_rng(seed)
    centre = _unit(rng.standard_normal(d))
    members = _unit(centre + 0.2 * rng.standard_normal((6, d)))
    noise = _unit(rng.standard_normal((300, d)))
    return centre, members, noise


def test_dba_pulls_a_planted_cluster_together():
    _, members, noise = _planted_cluster()
    x = np.concatenate([members, noise])
    before = members @ members.T
    y = Recipe({"dba": {"k": 3, "alpha": 1.0}}).transform_db(x)
    after = y[:6] @ y[:6].T
    off = ~np.eye(6, dtype=bool)
    assert after[off].mean() > before[off].mean() + 0.05


def test_query_expansion_pulls_a_planted_cluster_up():
    """The query is close to one member of a tight cluster only; expanding it with its
    top hit brings the rest of the cluster into its hits."""
    from radsearch.search import knn_rows

    plain_total = qe_total = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        centre = _unit(rng.standard_normal(32))
        members = _unit(centre + 0.2 * rng.standard_normal((6, 32)))
        x = np.concatenate([members, _unit(rng.standard_normal((300, 32)))])
        index = _vindex(x)
        q = _unit(members[0] + 1.2 * _unit(rng.standard_normal(32)))[None]
        _, plain = knn_rows(index, q, 6)
        index.set_recipe(Recipe({"qe": {"k": 1, "alpha": 1.0}}))
        _, qe = knn_rows(index, q, 6)
        plain_total += len(set(plain[0].tolist()) & set(range(6)))
        qe_total += len(set(qe[0].tolist()) & set(range(6)))
    assert qe_total >= plain_total + 3


# -- k-reciprocal re-ranking -----------------------------------------------------------
def test_rerank_restores_a_planted_reciprocal_neighbour():
    """A hub sits closest to the query but its reciprocal neighbours are all in another,
    tight group; the query's true neighbours share each other's neighbourhoods."""
    from radsearch.search import knn_rows

    for seed in range(3):
        rng = np.random.default_rng(seed)
        d = 24
        a, b = _unit(rng.standard_normal(d)), _unit(rng.standard_normal(d))
        own = _unit(a + 0.25 * rng.standard_normal((9, d)))  # the query's neighbours
        other = _unit(b + 0.05 * rng.standard_normal((12, d)))  # a tight group
        q = _unit(a + 0.25 * rng.standard_normal(d))
        best = float((own @ q).max())
        hub = _unit(b + q)
        while float(hub @ q) < best + 0.03:
            hub = _unit(hub + 0.05 * q)
        x = np.concatenate([hub[None], own, other])
        assert (x @ q).argmax() == 0  # cosine ranks the hub first
        index = _vindex(x)
        index.set_recipe(Recipe({"rerank": {"k1": 6, "k2": 3, "lambda": 0.2, "candidates": 22}}))
        _, rows = knn_rows(index, q[None], 22)
        assert 1 <= rows[0, 0] <= 9  # one of its own neighbours is first again
        assert list(rows[0]).index(0) > 0


def test_k_reciprocal_distance_shape_and_self():
    rng = np.random.default_rng(0)
    v = _unit(rng.standard_normal((2, 9, 8)))
    sim = v @ v.transpose(0, 2, 1)
    d = k_reciprocal_distance(sim, 4, 2, 0.3)
    assert d.shape == (2, 8) and np.all(np.isfinite(d)) and np.all(d >= 0)


# -- flip TTA --------------------------------------------------------------------------
class _AsymmetricEncoder:
    """A deliberately flip-sensitive linear encoder on 3x8x8 inputs."""

    dim = 5

    def __init__(self):
        self.w = np.random.default_rng(0).standard_normal((3 * 8 * 8, 5)).astype(np.float32)

    def preprocess_fn(self):
        return lambda rgb: np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0

    def collate(self, arrays):
        return np.stack(arrays)

    def encode(self, batch):
        return _unit(np.asarray(batch).reshape(len(batch), -1) @ self.w)

    def encode_images(self, images):
        return self.encode(self.collate([self.preprocess_fn()(im) for im in images]))


def test_flip_tta_makes_queries_flip_invariant():
    enc = _AsymmetricEncoder()
    img = (np.random.default_rng(1).random((8, 8, 3)) * 255).astype(np.uint8)
    mirror = img[:, ::-1]
    plain = Recipe({})
    assert not np.allclose(
        plain.encode_queries(enc, [img]), plain.encode_queries(enc, [mirror]), atol=1e-3
    )
    tta = Recipe({"flip": True})
    assert np.allclose(tta.encode_queries(enc, [img]), tta.encode_queries(enc, [mirror]), atol=1e-5)


# -- settings, persistence -------------------------------------------------------------
def test_manifest_round_trip_and_validation(tmp_path):
    r = Recipe({"whiten": {"power": 0.5}, "qe": True, "rerank": {"k1": 8}})
    spec = r.to_manifest()
    again = Recipe.from_manifest(json.loads(json.dumps(spec)))
    assert again.steps == r.steps
    assert r.steps["qe"] == {"k": 3, "alpha": 3.0}
    with pytest.raises(RadsearchError):
        Recipe({"sharpen": True})
    with pytest.raises(RadsearchError):
        Recipe({"qe": {"depth": 2}})
    f = tmp_path / "r.json"
    f.write_text(
        json.dumps({"version": 1, "steps": {"qe": {"k": 2}}, "chosen_on": {"val_split": "val"}})
    )
    assert load_recipe(str(f)).steps["qe"]["k"] == 2
    assert load_recipe("none") is None


def test_recipe_state_saved_with_index_and_refit_on_add(tmp_path):
    from radsearch.encoders import EncoderConfig
    from radsearch.index import Index
    from radsearch.io.items import ItemRef
    from radsearch.recipe import STATE_FILE
    from radsearch.search import knn_rows

    x = _unit(_anisotropic(200, 16))
    cfg = EncoderConfig(name="vec16", family="vectors", model_id="vec16", dim=16)
    index = Index.create(tmp_path / "ix", cfg)
    index.add([ItemRef(str(i), str(i)) for i in range(150)], x[:150])
    index.set_recipe(Recipe({"whiten": {"dim": 8}, "dba": {"k": 2}}))
    index.save()
    assert (tmp_path / "ix" / STATE_FILE).exists()
    q = x[150:160]
    s1, r1 = knn_rows(index, q, 5)
    reopened = Index.open(tmp_path / "ix")
    assert reopened.recipe.fitted and "w_proj" in reopened.recipe.state
    s2, r2 = knn_rows(reopened, q, 5)
    assert np.array_equal(r1, r2) and np.allclose(s1, s2, atol=1e-5)
    digest = reopened.manifest["recipe"]["state_digest"]
    reopened.add([ItemRef(str(i), str(i)) for i in range(150, 200)], x[150:])
    assert reopened.manifest["recipe"]["state_digest"] != digest  # refitted on 200 rows
    _, r3 = knn_rows(reopened, q, 1)
    assert np.array_equal(r3[:, 0], np.arange(150, 160))  # each finds itself


def test_filters_and_padding_with_recipe():
    from radsearch.search import knn_rows

    x = _unit(_anisotropic(50, 8))
    index = _vindex(x)
    index.set_recipe(Recipe({"whiten": {}, "qe": {"k": 2}, "rerank": {"k1": 4, "k2": 2}}))
    allowed = np.arange(0, 50, 10)
    s, r = knn_rows(index, x[:3], 8, rows_allowed=allowed)
    assert r.shape[0] == 3 and r.shape[1] <= 8
    assert set(r[r >= 0].tolist()) <= set(allowed.tolist())
    assert np.all(np.isfinite(s[r >= 0]))


# -- search == serve == evaluate -------------------------------------------------------
def _register_tiny_family():
    import torch

    from radsearch.encoders import EncoderConfig, register_encoder, register_family

    @register_family("test-recipe-tiny", available=lambda cfg: True)
    def _load(cfg, weights):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 24, 5, stride=2)
        return torch.nn.Sequential(
            conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
        )

    return register_encoder(
        EncoderConfig(
            name="test-recipe-tiny",
            family="test-recipe-tiny",
            model_id="tiny",
            dim=96,
            input_size=32,
        )
    )


@pytest.fixture
def tiny_recipe_index(tmp_path, pattern_folder):
    from radsearch.index import Index
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    cfg = _register_tiny_family()
    refs = list(iter_source(pattern_folder, label_from_folder=True))
    build_index(refs, tmp_path / "ix", model=cfg.name, workers=0, progress=False)
    index = Index.open(tmp_path / "ix")
    index.set_recipe(
        Recipe(
            {
                "whiten": {"dim": 8},
                "dba": {"k": 2},
                "qe": {"k": 2},
                "rerank": {"k1": 4, "k2": 2},
                "flip": {},
            }
        )
    )
    index.save()
    return tmp_path / "ix", sorted(pattern_folder.rglob("*.png"))


def test_search_serve_and_knn_rows_agree(tiny_recipe_index):
    from radsearch.index import Index
    from radsearch.io.items import read_image
    from radsearch.search import knn_rows, search_index

    path, images = tiny_recipe_index
    index = Index.open(path)
    queries = images[:4]
    k = 5
    via_search = [[h.id for h in r.hits] for r in search_index(index, queries, k=k)]
    recipe = index.recipe
    vecs = recipe.encode_queries(index.encoder(), [read_image(q) for q in queries])
    _, rows = knn_rows(index, vecs, k)
    ids = index.items.column("id").to_pylist()
    via_knn = [[ids[r] for r in row if r >= 0] for row in rows]
    assert via_search == via_knn
    try:
        from fastapi.testclient import TestClient

        from radsearch.serve import create_app
    except ImportError as exc:
        pytest.skip(f"serve not available: {exc}")
    client = TestClient(create_app(path), base_url="http://127.0.0.1")
    for q, expect in zip(queries, via_search, strict=True):
        with open(q, "rb") as fh:
            resp = client.post(
                "/api/search", files={"file": (q.name, fh, "image/png")}, data={"k": str(k)}
            )
        assert resp.status_code == 200, resp.text
        assert [h["id"] for h in resp.json()["hits"]] == expect


def test_tune_picks_a_recipe_on_val_only():
    from radsearch.tune import tune_recipe

    rng = np.random.default_rng(0)
    d = 48
    dom = rng.standard_normal((4, d)) * 3
    lab = rng.standard_normal((4, 3, d)) * 0.6
    noise = np.linspace(2, 0.1, d)

    def sample(n):
        a, b = rng.integers(4, size=n), rng.integers(3, size=n)
        x = dom[a] + lab[a, b] + rng.standard_normal((n, d)) * noise
        return _unit(x), [f"{i}/{j}" for i, j in zip(a, b, strict=True)]

    xi, li = sample(400)
    xv, lv = sample(120)
    recipe, best, trials = tune_recipe(xi, li, xv, lv, "quick")
    plain = trials[0]
    assert trials[0]["steps"] == {}
    assert recipe is not None and best["p@1_macro"] > plain["p@1_macro"]
    assert best["p@1_macro"] == max(t["p@1_macro"] for t in trials)


def test_tune_cli_writes_recipe_and_refuses_test(tmp_path, capsys):
    import csv

    from radsearch.cli import main
    from radsearch.encoders import EncoderConfig
    from radsearch.index import Index
    from radsearch.io.items import ItemRef

    rng = np.random.default_rng(0)
    d = 16
    centres = rng.standard_normal((3, d)) * 2
    rows, ids, vecs = [], [], []
    for i in range(150):
        lab = i % 3
        split = "train" if i < 100 else ("val" if i < 130 else "test")
        ids.append(f"img{i}.png")
        vecs.append(centres[lab] + rng.standard_normal(d) * np.linspace(3, 0.2, d))
        rows.append({"filepath": ids[-1], "label": f"c{lab}", "split": split})
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["filepath", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    vecs = _unit(np.asarray(vecs))
    np.savez(tmp_path / "e.npz", emb=vecs, filepath=np.asarray(ids))
    from radsearch.io.sources import iter_source

    refs = list(iter_source(tmp_path / "m.csv"))
    np.savez(tmp_path / "e.npz", emb=vecs, filepath=np.asarray([r.id for r in refs]))
    cfg = EncoderConfig(name="vec16", family="vectors", model_id="vec16", dim=d)
    ix = Index.create(tmp_path / "ix", cfg)
    ix.add([ItemRef(r.id, r.source) for r in refs[:100]], vecs[:100])
    ix.save()
    out = tmp_path / "best.json"
    argv = [
        "tune",
        str(tmp_path / "m.csv"),
        "--embeddings",
        str(tmp_path / "e.npz"),
        "--grid",
        "quick",
        "--out",
        str(out),
        "--quiet",
        "--apply",
        str(tmp_path / "ix"),
    ]
    assert main(argv) == 0
    spec = json.loads(out.read_text())
    assert spec["chosen_on"]["val_split"] == "val" and spec["chosen_on"]["queries"] == 30
    assert spec["trials"][0]["steps"] == {}
    assert Index.open(tmp_path / "ix").manifest["recipe"]["steps"] == spec["steps"]
    assert load_recipe(str(out)).steps == spec["steps"]
    assert (
        main(
            [
                "tune",
                str(tmp_path / "m.csv"),
                "--embeddings",
                str(tmp_path / "e.npz"),
                "--val-split",
                "test",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "test split" in capsys.readouterr().err
