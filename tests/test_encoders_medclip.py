"""MedCLIP (ViT variant) from a tiny checkpoint in the layout its authors publish."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from radsearch.encoders import create_encoder, get_config, list_encoders, preprocess  # noqa: E402
from radsearch.errors import EncoderError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_cfg():
    return get_config("medclip").replace(
        input_size=56, dim=24, extra={"vision_config": tm.TINY_SWIN}
    )


def test_medclip_is_listed_with_its_preprocessing():
    row = {r["name"]: r for r in list_encoders()}["medclip"]
    assert (row["dim"], row["input_size"], row["weights_here"]) == (512, 224, False)
    cfg = get_config("medclip")
    assert cfg.resize == "pad" and cfg.interpolation == "bicubic"
    assert cfg.mean == (0.5862785803043838,) * 3 and cfg.std == (0.27950088968644304,) * 3


def test_medclip_tiny_checkpoint_matches_swin_plus_projection(tmp_path, no_network):
    d, swin, projection = tm.save_tiny_medclip(tmp_path / "medclip")
    cfg = _tiny_cfg()
    images = tm.synthetic_images()
    v_dir = create_encoder(cfg, weights=str(d)).encode_images(images)
    v_file = create_encoder(cfg, weights=str(d / "pytorch_model.bin")).encode_images(images)
    np.testing.assert_allclose(v_dir, v_file, atol=1e-6)
    x = torch.from_numpy(np.stack([preprocess(im, cfg) for im in images]))
    with torch.no_grad():
        ref = swin(pixel_values=x).pooler_output @ projection.T
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    assert v_dir.shape == (len(images), 24)
    np.testing.assert_allclose(v_dir, ref, atol=1e-5)
    assert np.abs(v_dir @ v_dir.T - np.eye(len(images))).max() > 1e-3  # not all the same


def test_medclip_needs_weights_fast():
    t0 = time.perf_counter()
    with pytest.raises(EncoderError, match="'medclip' needs --weights"):
        create_encoder("medclip")
    assert time.perf_counter() - t0 < 2


def test_medclip_rejects_other_checkpoints(tmp_path):
    path, _ = tm.save_tiny_sam_checkpoint(tmp_path / "sam.pth")
    with pytest.raises(EncoderError, match="not a MedCLIP-ViT checkpoint"):
        create_encoder(_tiny_cfg(), weights=str(path))
    d, _, _ = tm.save_tiny_medclip(tmp_path / "m")
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    state = {k: v for k, v in state.items() if "layernorm." not in k}
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(EncoderError, match="lacks Swin weights"):
        create_encoder(_tiny_cfg(), weights=str(d))
    with pytest.raises(EncoderError, match="not found"):
        create_encoder(_tiny_cfg(), weights=str(tmp_path / "absent.bin"))
