"""The index-time region pass runs on ONNX Runtime when it is faithful: same maps as
eager torch (cell cosine), so region codes do not depend on the runtime chosen."""

from __future__ import annotations

import numpy as np


def test_region_maps_on_onnx_match_eager(one_torch_thread, pattern_folder):
    from PIL import Image

    from radsearch.encoders import create_encoder
    from radsearch.encoders.accel import accelerate_spatial

    encoder = create_encoder("efficientnet-lite0")
    images = [
        np.asarray(Image.open(p).convert("RGB")) for p in sorted(pattern_folder.rglob("*.png"))
    ]
    batch = encoder.collate([encoder.preprocess(img) for img in images[:6]])
    eager = encoder.feature_grid(batch, "b10")
    accelerate_spatial(encoder, "b10", runtime="onnx")
    assert "b10" in encoder._spatial_fast  # the ONNX path was taken
    fast = encoder.feature_grid(batch, "b10")
    assert fast.shape == eager.shape == (6, 14, 14, eager.shape[-1])
    a = eager.reshape(-1, eager.shape[-1])
    b = fast.reshape(-1, fast.shape[-1])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    assert cos.min() > 0.999
    # the head map (another layer) is still served by the eager module
    assert encoder.feature_grid(batch, "head").shape[1:3] == (7, 7)
