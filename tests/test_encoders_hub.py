"""Hub-backed encoder families (transformers, open_clip, timm) through the public registry,
with tiny random models saved in the layouts real downloads have."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("open_clip")
pytest.importorskip("timm")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from radsearch.encoders import create_encoder, get_config, preprocess, weights_available  # noqa: E402
from radsearch.encoders.hf import config_from_hf_dir  # noqa: E402
from radsearch.errors import EncoderError  # noqa: E402

IMAGES = tm.synthetic_images()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def check_vectors(enc, dim):
    v = enc.encode_images(IMAGES)
    assert v.shape == (2, dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(IMAGES), v, atol=1e-6)  # deterministic
    assert float(v[0] @ v[1]) < 0.9999  # different images, different vectors
    return v


def batch(cfg):
    return torch.from_numpy(np.stack([preprocess(im, cfg) for im in IMAGES]))


def unit(t):
    return torch.nn.functional.normalize(t.float(), dim=-1).detach().numpy()


# --- transformers ----------------------------------------------------------------------

HF_CASES = [
    ("dinov2-b14", "dinov2", 32),
    ("vit-b16", "vit", 32),
    ("vit-mae-b", "vit_mae", 32),
    ("resnet50", "resnet", 16),
    ("sam-vit-b", "sam", 16),
]


@pytest.mark.parametrize("name,kind,dim", HF_CASES)
def test_hf_registered_names_load_from_hf_cache(name, kind, dim, hf_cache, no_network):
    cfg = get_config(name)
    model = tm.tiny_hf(kind).eval()
    tm.save_hf(model, tm.hf_snapshot_dir(hf_cache, cfg.model_id))
    assert weights_available(cfg)
    enc = create_encoder(cfg.replace(dim=dim))  # tiny width; everything else as registered
    v = check_vectors(enc, dim)

    x = batch(cfg)
    with torch.no_grad():
        if kind == "sam":
            ref = model.get_image_embeddings(x).mean(dim=(2, 3))
        elif kind == "resnet":
            ref = model(pixel_values=x).pooler_output.flatten(1)
        elif kind == "vit_mae":
            assert enc.module.model.config.mask_ratio == 0.0
            model.config.mask_ratio = 0.0
            n = (cfg.input_size // 32) ** 2
            out = model(pixel_values=x, noise=torch.arange(n).float().expand(2, n))
            assert out.last_hidden_state.shape[1] == n + 1  # every patch kept
            ref = out.last_hidden_state[:, 0]
        else:
            ref = model(pixel_values=x).last_hidden_state[:, 0]
    np.testing.assert_allclose(v, unit(ref), atol=1e-5)


def test_registered_hf_configs_match_real_architectures(tmp_path):
    """dim/pooling of the registered names equal what the full-size configs imply."""
    import transformers as t

    real = {
        "dinov2-b14": t.Dinov2Config(),
        "rad-dino": t.Dinov2Config(),
        "vit-b16": t.ViTConfig(),
        "vit-mae-b": t.ViTMAEConfig(),
        "resnet50": t.ResNetConfig(),
        "sam-vit-b": t.SamConfig(),
    }
    for name, mc in real.items():
        d = tmp_path / name
        mc.save_pretrained(str(d))
        derived = config_from_hf_dir(name, name, d, local=True)
        cfg = get_config(name)
        assert (derived.dim, derived.pooling) == (cfg.dim, cfg.pooling), name
        assert not weights_available(derived)  # a config without weights is not "available"


def test_hf_prefix_reads_repo_preprocessing(hf_cache, tmp_path, no_network):
    pp = {
        "do_center_crop": True,
        "crop_size": {"height": 56, "width": 56},
        "size": {"shortest_edge": 64},
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "resample": 2,
    }
    tm.save_hf(tm.tiny_hf("dinov2"), tm.hf_snapshot_dir(hf_cache, "org/tiny-dino"), pp)
    cfg = get_config("hf:org/tiny-dino")
    assert (cfg.family, cfg.dim, cfg.input_size, cfg.resize, cfg.pooling) == (
        "hf",
        32,
        56,
        "shorter-crop",
        "cls",
    )
    assert cfg.mean == (0.1, 0.2, 0.3) and cfg.std == (0.4, 0.5, 0.6)
    assert cfg.interpolation == "bilinear"
    check_vectors(create_encoder("hf:org/tiny-dino"), 32)

    local = tm.save_hf(
        tm.tiny_hf("resnet"), tmp_path / "tiny-resnet", {"size": {"height": 64, "width": 64}}
    )
    cfg = get_config(f"hf:{local}")
    assert (cfg.dim, cfg.pooling, cfg.resize, cfg.input_size) == (16, "pooler", "squash", 64)
    check_vectors(create_encoder(f"hf:{local}"), 16)


def test_hf_weights_dir_and_checkpoint_dir(hf_cache, tmp_path, no_network):
    model = tm.tiny_hf("vit").eval()
    d = tm.save_hf(model, tmp_path / "vit")
    cfg = get_config("vit-b16").replace(dim=32)
    v1 = check_vectors(create_encoder(cfg, weights=str(d)), 32)  # --weights DIR, empty cache

    (d / "radsearch_encoder.json").write_text(json.dumps(cfg.to_dict()))
    v2 = check_vectors(create_encoder(str(d)), 32)  # local checkpoint directory
    np.testing.assert_allclose(v1, v2, atol=1e-6)


# --- missing weights / packages ------------------------------------------------------------


@pytest.mark.parametrize(
    "name,repo",
    [
        ("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
        ("clip-vit-l14", "timm/vit_large_patch14_clip_224.openai"),
        ("dinov2-b14", "facebook/dinov2-base"),
        ("rad-dino", "microsoft/rad-dino"),
        ("timm:resnet18", "timm/resnet18"),
        ("open_clip:ViT-B-32/laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ],
)
def test_missing_weights_error_is_fast_and_says_where(name, repo, hf_cache, no_network):
    t0 = time.perf_counter()
    cfg = get_config(name)
    assert not weights_available(cfg)
    with pytest.raises(EncoderError) as err:
        create_encoder(name)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert repr(name) in msg and "--weights" in msg and str(hf_cache) in msg
    assert repo in msg and "download" in msg


def test_hf_prefix_missing_repo(hf_cache, no_network):
    with pytest.raises(EncoderError, match="hf:org/absent.*org/absent"):
        get_config("hf:org/absent")


def test_missing_package_names_hub_extra(tmp_path, monkeypatch):
    d = tm.save_tiny_open_clip(tmp_path / "oc")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(EncoderError, match=r"radsearch\[hub\]"):
        create_encoder(f"open_clip:{d}")


# --- open_clip -------------------------------------------------------------------------------


def test_open_clip_local_dir_images_and_text(tmp_path, hf_cache, no_network):
    import open_clip

    d = tm.save_tiny_open_clip(tmp_path / "oc")
    cfg = get_config(f"open_clip:{d}")
    assert (cfg.family, cfg.dim, cfg.input_size, cfg.resize, cfg.interpolation) == (
        "open_clip",
        16,
        32,
        "shorter-crop",
        "bicubic",
    )
    enc = create_encoder(f"open_clip:{d}")
    v = check_vectors(enc, 16)

    ref_model = open_clip.create_model(f"local-dir:{d}").eval()
    with torch.no_grad():
        np.testing.assert_allclose(v, unit(ref_model.encode_image(batch(cfg))), atol=1e-5)

    texts = ["chest x-ray with effusion", "axial brain MRI"]
    t = enc.encode_text(texts)
    assert t.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert float(t[0] @ t[1]) < 0.9999
    np.testing.assert_allclose(enc.encode_text(texts), t, atol=1e-6)
    tok = open_clip.get_tokenizer(f"local-dir:{d}")
    with torch.no_grad():
        np.testing.assert_allclose(t, unit(ref_model.encode_text(tok(texts))), atol=1e-5)


def test_biomedclip_resolves_hf_hub_repo_from_cache(tmp_path, hf_cache, no_network):
    cfg = get_config("biomedclip")
    assert (cfg.dim, cfg.input_size, cfg.resize, cfg.interpolation) == (
        512,
        224,
        "shorter-crop",
        "bicubic",
    )
    assert cfg.mean == (0.48145466, 0.4578275, 0.40821073)
    assert cfg.std == (0.26862954, 0.26130258, 0.27577711)
    snap = tm.hf_snapshot_dir(hf_cache, cfg.model_id.removeprefix("hf-hub:"))
    tm.save_tiny_open_clip(snap)
    assert weights_available(cfg)
    enc = create_encoder(cfg.replace(dim=16, input_size=32))
    check_vectors(enc, 16)
    assert enc.encode_text(["pneumothorax"]).shape == (1, 16)


def test_open_clip_arch_with_weights_file(tmp_path, no_network):
    """The ``<arch>/<tag>`` path: built-in architecture + weights file + quick_gelu."""
    import open_clip

    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "radsearch-tiny.json").write_text(json.dumps(tm.TINY_OPEN_CLIP["model_cfg"]))
    open_clip.add_model_config(cfg_dir / "radsearch-tiny.json")
    weights = tm.save_tiny_open_clip(tmp_path / "oc") / "open_clip_pytorch_model.bin"
    cfg = get_config("clip-vit-l14").replace(
        model_id="radsearch-tiny/openai", dim=16, input_size=32
    )
    enc = create_encoder(cfg, weights=str(weights))
    v = check_vectors(enc, 16)
    ref = open_clip.create_model(
        "radsearch-tiny", pretrained=str(weights), force_quick_gelu=True
    ).eval()
    with torch.no_grad():
        np.testing.assert_allclose(v, unit(ref.encode_image(batch(cfg))), atol=1e-5)


def test_open_clip_prefix_arch_tag_config():
    cfg = get_config("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert (cfg.family, cfg.dim, cfg.input_size, cfg.model_id) == (
        "open_clip",
        512,
        224,
        "ViT-B-32/laion2b_s34b_b79k",
    )
    with pytest.raises(EncoderError, match="tag"):
        get_config("open_clip:ViT-B-32/no-such-tag")


def test_encode_text_rejects_non_clip(hf_cache, no_network):
    tm.save_hf(tm.tiny_hf("vit"), tm.hf_snapshot_dir(hf_cache, "google/vit-base-patch16-224-in21k"))
    enc = create_encoder(get_config("vit-b16").replace(dim=32))
    with pytest.raises(EncoderError, match="vit-b16.*text"):
        enc.encode_text(["x"])


# --- timm ------------------------------------------------------------------------------------


def test_timm_prefix_file_cache_and_reference(tmp_path, hf_cache, no_network):
    import timm

    name = f"timm:{tm.TIMM_TINY}"
    cfg = get_config(name)
    assert (cfg.family, cfg.dim, cfg.input_size, cfg.resize) == ("timm", 1024, 224, "shorter-crop")
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.interpolation == "bicubic"
    assert not weights_available(cfg)

    f = tm.save_tiny_timm(tmp_path / "w" / "model.safetensors")
    cfg = cfg.replace(input_size=64)  # same network, fewer pixels: keeps the test fast
    enc = create_encoder(cfg, weights=str(f))
    v = check_vectors(enc, 1024)

    ref = timm.create_model(tm.TIMM_TINY, num_classes=0).eval()
    from safetensors.torch import load_file

    ref.load_state_dict(
        {k: t for k, t in load_file(str(f)).items() if not k.startswith("classifier.")}
    )
    with torch.no_grad():
        np.testing.assert_allclose(v, unit(ref(batch(cfg))), atol=1e-5)

    snap = tm.hf_snapshot_dir(hf_cache, cfg.extra["hf_hub_id"])
    (snap / "model.safetensors").write_bytes(f.read_bytes())
    assert weights_available(cfg)
    np.testing.assert_allclose(create_encoder(cfg).encode_images(IMAGES), v, atol=1e-6)


# --- identity: a moved model directory keeps its hash ----------------------------------------


def test_moved_hf_and_open_clip_dirs_keep_their_hash(tmp_path, hf_cache, no_network):
    import shutil

    hf_dir = tm.save_hf(tm.tiny_hf("resnet"), tmp_path / "a" / "resnet")
    oc_dir = tm.save_tiny_open_clip(tmp_path / "a" / "oc")
    before = {p: get_config(f"{p}:{d}") for p, d in (("hf", hf_dir), ("open_clip", oc_dir))}
    vectors = {p: create_encoder(cfg).encode_images(IMAGES) for p, cfg in before.items()}
    shutil.move(tmp_path / "a", tmp_path / "b")
    for prefix, name in (("hf", "resnet"), ("open_clip", "oc")):
        cfg = get_config(f"{prefix}:{tmp_path / 'b' / name}")
        assert cfg.hash == before[prefix].hash and cfg.location != before[prefix].location
        np.testing.assert_allclose(
            create_encoder(cfg).encode_images(IMAGES), vectors[prefix], atol=1e-6
        )
    other = tm.save_hf(tm.tiny_hf("dinov2"), tmp_path / "dino")  # another architecture
    assert get_config(f"hf:{other}").hash != before["hf"].hash
