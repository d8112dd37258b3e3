"""Fusion encoders: names, config hash, block normalisation and weights, embed path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radsearch.encoders import (
    EncoderConfig,
    create_encoder,
    get_config,
    register_encoder,
    register_family,
)
from radsearch.errors import EncoderError


@register_family("test-fusion-tiny", available=lambda cfg: True)
def _tiny(cfg, weights):
    torch.manual_seed(int(cfg.extra.get("seed", 0)))
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, cfg.dim, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )


register_encoder(
    EncoderConfig(name="tiny-a", family="test-fusion-tiny", model_id="a", dim=6, input_size=24)
)
register_encoder(
    EncoderConfig(
        name="tiny-b",
        family="test-fusion-tiny",
        model_id="b",
        dim=4,
        input_size=40,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        extra={"seed": 1},
    )
)


def _images(n=3):
    rng = np.random.default_rng(0)
    return [(rng.random((50 + 7 * i, 60, 3)) * 255).astype(np.uint8) for i in range(n)]


def test_fusion_config_and_hash():
    cfg = get_config("fusion:tiny-a+tiny-b")
    assert cfg.family == "fusion" and cfg.dim == 10
    assert [m["name"] for m in cfg.extra["members"]] == ["tiny-a", "tiny-b"]
    assert get_config("fusion:tiny-a@0.5+tiny-b").hash != cfg.hash
    assert get_config("fusion:tiny-b+tiny-a").hash != cfg.hash
    with pytest.raises(EncoderError):
        get_config("fusion:tiny-a")
    with pytest.raises(EncoderError):
        get_config("fusion:tiny-a@x+tiny-b")
    with pytest.raises(EncoderError):
        get_config("fusion:tiny-a+nonexistent-model")


def test_fusion_blocks_are_normalised_and_weighted():
    a, b = create_encoder("tiny-a"), create_encoder("tiny-b")
    imgs = _images()
    va, vb = a.encode_images(imgs), b.encode_images(imgs)
    fused = create_encoder("fusion:tiny-a@2+tiny-b")
    v = fused.encode_images(imgs)
    assert v.shape == (3, 10)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    expect = np.concatenate([2 * va, vb], axis=1) / np.sqrt(5)
    assert np.allclose(v, expect, atol=1e-5)
    # cosine of fused vectors = weighted sum of the members' cosines
    sim = v @ v.T
    assert np.allclose(sim, (4 * va @ va.T + vb @ vb.T) / 5, atol=1e-5)


def test_fusion_through_the_embed_path(tmp_path):
    """embed.py: preprocess_fn() in workers, then collate + encode."""
    from PIL import Image

    from radsearch.embed import embed_refs
    from radsearch.io.items import ItemRef

    imgs = _images(4)
    refs = []
    for i, im in enumerate(imgs):
        p = tmp_path / f"{i}.png"
        Image.fromarray(im).save(p)
        refs.append(ItemRef(id=p.name, source=str(p)))
    enc = create_encoder("fusion:tiny-a+tiny-b")
    res = embed_refs(refs, enc, tmp_path / "work", batch_size=3, workers=0, progress=False)
    assert res.vectors.shape == (4, 10)
    assert np.allclose(res.vectors, enc.encode_images(imgs), atol=1e-5)


def test_fusion_index_and_flip_recipe(tmp_path):
    from radsearch.index import Index
    from radsearch.io.items import ItemRef
    from radsearch.recipe import Recipe

    enc = create_encoder("fusion:tiny-a+tiny-b")
    imgs = _images(4)
    index = Index.create(tmp_path / "ix", "fusion:tiny-a+tiny-b")
    index.add([ItemRef(str(i), str(i)) for i in range(4)], enc.encode_images(imgs))
    index.set_recipe(Recipe({"flip": True}))
    index.save()
    index = Index.open(tmp_path / "ix")
    assert type(index.encoder()).__name__ == "FusionEncoder"
    q = index.recipe.encode_queries(index.encoder(), [imgs[0][:, ::-1]])
    q2 = index.recipe.encode_queries(index.encoder(), [imgs[0]])
    assert np.allclose(q, q2, atol=1e-5)
    from radsearch.search import knn_rows

    hits = index.search([imgs[1]], k=2)[0].hits
    _, rows = knn_rows(index, index.recipe.encode_queries(index.encoder(), [imgs[1]]), 2)
    assert [h.id for h in hits] == [str(r) for r in rows[0]]


def test_named_offline_fusions_registered():
    cfg = get_config("lite0+lite2")
    assert cfg.family == "fusion" and cfg.dim == 2560
    assert [m["name"] for m in cfg.extra["members"]] == ["efficientnet-lite0", "efficientnet-lite2"]


# -- EfficientNet feature variants (taps, pooling, scales, flip) -------------------------
def test_efficientnet_default_config_unchanged_and_variants_hash():
    base = get_config("efficientnet-lite0")
    assert base.hash == "bdcf82b5b4477e4a"  # existing indexes and caches stay valid
    mid = get_config("efficientnet-lite0-mid")
    assert mid.dim == 80 + 112 + 192 and mid.hash != base.hash
    from radsearch.encoders.efficientnet import efficientnet_variant

    v = efficientnet_variant(
        "efficientnet-lite0", "x", taps=["b10:grid2", "head:gem"], scales=[224, 288], flip=True
    )
    assert v.dim == 112 * 4 + 1280 and v.input_size == 288
    assert (
        v.hash
        != efficientnet_variant("efficientnet-lite0", "x", taps=["b10:grid2", "head:gem"]).hash
    )
    with pytest.raises(EncoderError):
        efficientnet_variant("efficientnet-lite0", "x", taps=["b99:avg"])


def test_efficientnet_variant_features_match_their_definition():
    from radsearch.encoders import weights_available

    if not weights_available(get_config("efficientnet-lite0")):
        pytest.skip("efficientnet-lite0 weights package not installed")
    from radsearch.encoders.efficientnet import efficientnet_variant, parse_taps

    cfg = efficientnet_variant(
        "efficientnet-lite0", "t", taps=["b10:avg", "head:gem"], tap_weights=[2.0, 1.0], flip=True
    ).replace(input_size=64)
    enc = create_encoder(cfg)
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    )
    v = enc.encode(x.numpy())
    assert v.shape == (2, cfg.dim)
    with torch.inference_mode():
        raw = [
            (a + b) / 2
            for a, b in zip(
                enc.module.raw(x, parse_taps(cfg), [64]),
                enc.module.raw(x.flip(-1), parse_taps(cfg), [64]),
                strict=True,
            )
        ]
    parts = [
        w * torch.nn.functional.normalize(r, dim=-1) for r, w in zip(raw, (2.0, 1.0), strict=True)
    ]
    expect = torch.nn.functional.normalize(torch.cat(parts, -1), dim=-1).numpy()
    assert np.allclose(v, expect, atol=1e-4)
    # flip is built in: the mirrored image gives the same vector
    assert np.allclose(enc.encode(x.flip(-1).numpy()), v, atol=1e-4)
    # the plain config still equals the library's pooled head features
    plain = create_encoder(get_config("efficientnet-lite0").replace(input_size=64))
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(
            plain.module.net.extract_features(x).mean((2, 3)), dim=-1
        ).numpy()
    assert np.allclose(plain.encode(x.numpy()), ref, atol=1e-5)


# -- contrast normalisation (histogram equalisation before resizing) --------------------
def _exposures():
    """One synthetic radiograph-like image at two exposures (a monotone intensity map)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:96]
    base = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.1 * rng.random((96, 96))
    dark = np.clip(40 + 60 * base, 0, 255).astype(np.uint8)  # under-exposed, low contrast
    bright = np.clip(-60 + 300 * base, 0, 255).astype(np.uint8)  # over-exposed, high contrast
    return [np.repeat(im[..., None], 3, axis=2) for im in (dark, bright)]


def test_equalize_contrast_spreads_histogram_and_keeps_old_hashes():
    from radsearch.encoders.base import preprocess

    cfg = get_config("efficientnet-lite0")
    eq = cfg.replace(contrast="equalize")
    assert "contrast" not in cfg.to_dict() or cfg.contrast == "none"
    assert cfg.hash == "bdcf82b5b4477e4a" and eq.hash != cfg.hash
    dark, _ = _exposures()
    plain_x, eq_x = preprocess(dark, cfg), preprocess(dark, eq)
    # the dark image uses under half the [-1, 1] range; equalised it spans nearly all of it
    assert plain_x.max() - plain_x.min() < 1.0
    assert eq_x.max() - eq_x.min() > 1.8
    with pytest.raises(ValueError, match="contrast"):
        preprocess(dark, cfg.replace(contrast="clahe-typo"))
    # a config round-trips through the manifest dict with its contrast policy
    assert EncoderConfig.from_dict(eq.to_dict()).hash == eq.hash
    # the registered equalised variants (docs/recipes.md) carry it, with their tapped dims
    for name, dim in (
        ("efficientnet-lite0-deep-eq", 40 + 80 + 112 + 4 * 192),
        ("efficientnet-lite2-deep-eq", 88 + 88 + 4 * 120),
    ):
        v = get_config(name)
        assert v.contrast == "equalize" and v.dim == dim


def test_equalize_contrast_makes_vectors_exposure_invariant():
    from radsearch.encoders import weights_available
    from radsearch.encoders.efficientnet import efficientnet_variant

    if not weights_available(get_config("efficientnet-lite0")):
        pytest.skip("efficientnet-lite0 weights package not installed")
    dark, bright = _exposures()
    cos = {}
    for contrast in ("none", "equalize"):
        cfg = efficientnet_variant(
            "efficientnet-lite0", f"t-{contrast}", taps=["b10:avg"], contrast=contrast
        )
        v = create_encoder(cfg).encode_images([dark, bright])
        cos[contrast] = float(v[0] @ v[1])
    # histogram equalisation undoes a monotone exposure change: the two exposures
    # become (nearly) the same vector, far closer than without it
    assert cos["equalize"] > 0.99
    assert 1 - cos["equalize"] < 0.2 * (1 - cos["none"])
