"""Tiny randomly initialised models of the real architectures, saved in the layouts the
encoder loaders read (HF cache snapshot, open_clip dir, timm file, SAM checkpoint).

Real weights are not reachable here; the loading code is the same for tiny and full
models, so these exercise it end to end in well under a second each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hf_snapshot_dir(cache: Path, repo_id: str) -> Path:
    """Create ``models--org--name/{refs/main, snapshots/<hash>/}`` as the HF cache does."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(FAKE_COMMIT)
    snap = repo_dir / "snapshots" / FAKE_COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def save_hf(model, directory: Path, preprocessor: dict | None = None) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(str(directory))
    if preprocessor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


def tiny_hf(kind: str):
    """A tiny transformers model of the family behind each registered ``hf`` name."""
    import transformers as t

    torch.manual_seed(0)
    if kind == "dinov2":
        return t.Dinov2Model(
            t.Dinov2Config(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=56,
                patch_size=14,
            )
        )
    if kind == "vit":
        return t.ViTModel(
            t.ViTConfig(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=224,
                patch_size=32,
            )
        )
    if kind == "vit_mae":
        return t.ViTMAEModel(
            t.ViTMAEConfig(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=224,
                patch_size=32,
                mask_ratio=0.75,
            )
        )
    if kind == "resnet":
        return t.ResNetModel(
            t.ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
            )
        )
    if kind == "sam":
        vision = dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_dim=64,
            image_size=1024,
            patch_size=128,
            output_channels=16,
            window_size=4,
            global_attn_indexes=[0],
        )
        cfg = t.SamConfig(
            vision_config=vision,
            prompt_encoder_config=dict(
                hidden_size=16,
                image_size=1024,
                patch_size=128,
                image_embedding_size=8,
                mask_input_channels=4,
            ),
            mask_decoder_config=dict(
                hidden_size=16,
                mlp_dim=32,
                num_attention_heads=2,
                num_hidden_layers=1,
                iou_head_hidden_dim=16,
            ),
        )
        return randomise(t.SamModel(cfg))
    raise ValueError(kind)


def randomise(model, std: float = 0.05):
    """SAM initialises with std 1e-10 and zero rel-pos tables, which would make every
    image map to (almost) the same vector; draw visible random weights instead."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1 or "rel_pos" in name or "pos_embed" in name:
                p.normal_(std=std)
    return model


TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def save_tiny_open_clip(directory: Path) -> Path:
    """open_clip ``local-dir`` layout: open_clip_config.json + open_clip_pytorch_model.bin."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    cfg_path = directory / "open_clip_config.json"
    cfg_path.write_text(json.dumps(TINY_OPEN_CLIP))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_OPEN_CLIP["model_cfg"])
    # open_clip zero-initialises the text projection; give it random values so that texts
    # map to distinct vectors.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


TIMM_TINY = "mobilenetv3_small_050"


def save_tiny_timm(path: Path) -> Path:
    """A randomly initialised real timm architecture (1.6M params), classifier included."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TIMM_TINY, pretrained=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# segment_anything ImageEncoderViT layout, written independently of the loader's table.
_TO_SEGMENT_ANYTHING = [
    ("vision_encoder.", "image_encoder."),
    ("patch_embed.projection.", "patch_embed.proj."),
    ("layers.", "blocks."),
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("neck.conv1.", "neck.0."),
    ("neck.norm1.", "neck.1."),
    ("neck.conv2.", "neck.2."),
    ("neck.norm2.", "neck.3."),
]

TINY_SAM_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_dim=64,
    image_size=64,
    patch_size=16,
    output_channels=16,
    window_size=2,
    global_attn_indexes=[1],
)


def save_tiny_sam_checkpoint(path: Path) -> tuple[Path, dict]:
    """A MedSAM-style ``.pth`` ({'image_encoder.blocks.0.norm1.weight': ...}) of a tiny ViT.

    Returns the path and the transformers-named state dict it was made from.
    """
    from transformers import SamVisionConfig, SamVisionModel

    torch.manual_seed(0)
    model = randomise(SamVisionModel(SamVisionConfig(**TINY_SAM_VISION)))
    hf_state = {k: v.clone() for k, v in model.state_dict().items()}
    sam_state = {}
    for key, value in hf_state.items():
        new = key.replace("neck.layer_norm1.", "neck.norm1.").replace(
            "neck.layer_norm2.", "neck.norm2."
        )
        for old, rep in _TO_SEGMENT_ANYTHING:
            new = new.replace(old, rep)
        sam_state[new] = value
    sam_state["mask_decoder.iou_token.weight"] = torch.zeros(1, 4)  # other SAM parts ignored
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam_state, path)
    return path, hf_state


def synthetic_images(size: int = 80) -> list[np.ndarray]:
    """Two clearly different RGB uint8 images (a gradient and a bright disc)."""
    yy, xx = np.mgrid[0:size, 0:size]
    a = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], -1)
    b = np.zeros((size, size, 3), np.int64)
    b[(yy - size / 3) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2] = (250, 240, 200)
    b[size * 3 // 4 :, :] = (30, 90, 160)
    return [a.astype(np.uint8), b.astype(np.uint8)]


# MedCLIP-ViT: Swin keys as the transformers of 2022 wrote them (the released checkpoint),
# written independently of the loader (which relies on transformers' own renaming).
TINY_SWIN = dict(
    embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=7, image_size=56, patch_size=4
)
_TO_SWIN_2022 = [
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    (
        "attention.relative_position_bias.relative_position_bias_table",
        "attention.self.relative_position_bias_table",
    ),
    ("attention.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
]


def save_tiny_medclip(directory: Path, proj_dim: int = 24):
    """A MedCLIP-style ``pytorch_model.bin`` of a tiny Swin: ``vision_model.model.*`` (old
    key names, with the ``relative_position_index`` buffers they kept),
    ``vision_model.projection_head.weight``, a text tower and ``logit_scale``.

    Returns the directory, the Swin model and the projection weight it was made from.
    """
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(0)
    swin = randomise(SwinModel(SwinConfig(**TINY_SWIN))).eval()
    state = {}
    for key, value in swin.state_dict().items():
        for new, old in _TO_SWIN_2022:
            key = key.replace(new, old)
        state["vision_model.model." + key] = value.clone()
    for name, _ in swin.named_modules():
        if name.endswith("blocks.0") or name.endswith("blocks.1"):
            n = TINY_SWIN["window_size"] ** 2
            state[f"vision_model.model.{name}.attention.self.relative_position_index"] = (
                torch.zeros(n * n, dtype=torch.long)
            )
    projection = torch.randn(proj_dim, swin.num_features) * 0.1
    state["vision_model.projection_head.weight"] = projection
    state["text_model.projection_head.weight"] = torch.randn(proj_dim, 8)
    state["logit_scale"] = torch.tensor(2.65)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "pytorch_model.bin")
    return directory, swin, projection
