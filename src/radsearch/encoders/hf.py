"""The transformers family (``hf``): registered hub names and ``hf:<repo or dir>``.

Local layout: ``config.json`` + ``model.safetensors`` (``save_pretrained`` output).
Weights come from :mod:`radsearch.encoders.hubcache` (never downloaded at run time).

Pooling (the vector each model returns before L2 normalisation):
- ``dinov2-b14``, ``rad-dino``, ``vit-b16``: CLS token of the last hidden state (after
  the final layer norm), 768-d.
- ``vit-mae-b``: same, with ``mask_ratio=0`` and identity patch order, so every patch
  is seen and the result is deterministic.
- ``sam-vit-b``: ``SamModel.get_image_embeddings`` (256x64x64) mean-pooled, 256-d.
- ``resnet50``: the model's pooler output (global average of the last stage), 2048-d.
- ``hf:<repo>``: ``pooler`` for CNNs (configs with ``hidden_sizes``), SAM as above,
  CLS otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from radsearch.encoders.base import EncoderConfig
from radsearch.encoders.hubcache import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cached_snapshot,
    find_weights_in,
    hub_offline,
    import_optional,
    local_dir,
    not_found,
)
from radsearch.encoders.registry import register_encoder, register_family, register_prefix
from radsearch.errors import EncoderError

_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def _hf(name, repo, dim, size, resize, mean, std, pooling, interp="bicubic", desc="", **extra):
    return register_encoder(
        EncoderConfig(
            name=name,
            family="hf",
            model_id=repo,
            dim=dim,
            input_size=size,
            resize=resize,
            interpolation=interp,
            mean=mean,
            std=std,
            pooling=pooling,
            description=desc,
            weights_hint=f"hf download {repo}",
            extra=extra,
        )
    )


_hf(
    "dinov2-b14",
    "facebook/dinov2-base",
    768,
    224,
    "shorter-crop",
    IMAGENET_MEAN,
    IMAGENET_STD,
    "cls",
    desc="DINOv2 ViT-B/14 (self-supervised, natural images), CLS token",
)
_hf(
    "rad-dino",
    "microsoft/rad-dino",
    768,
    518,
    "shorter-crop",
    (0.5307,) * 3,
    (0.2583,) * 3,
    "cls",
    desc="RAD-DINO (DINOv2 ViT-B/14 trained on chest X-rays), CLS token",
)
_hf(
    "vit-b16",
    "google/vit-base-patch16-224-in21k",
    768,
    224,
    "squash",
    (0.5,) * 3,
    (0.5,) * 3,
    "cls",
    interp="bilinear",
    desc="ViT-B/16 ImageNet-21k, CLS token",
)
_hf(
    "vit-mae-b",
    "facebook/vit-mae-base",
    768,
    224,
    "squash",
    IMAGENET_MEAN,
    IMAGENET_STD,
    "cls",
    interp="bilinear",
    desc="ViT-MAE base (masking off), CLS token",
    from_pretrained={"mask_ratio": 0.0},
)
_hf(
    "sam-vit-b",
    "facebook/sam-vit-base",
    256,
    1024,
    "pad",
    IMAGENET_MEAN,
    IMAGENET_STD,
    "sam-avg",
    interp="bilinear",
    desc="SAM ViT-B image embedding, mean-pooled",
)
_hf(
    "resnet50",
    "microsoft/resnet-50",
    2048,
    224,
    "shorter-crop",
    IMAGENET_MEAN,
    IMAGENET_STD,
    "pooler",
    desc="ResNet-50 ImageNet-1k, global average pooled",
)


def _hf_dir(cfg: EncoderConfig, weights: str | None) -> Path | None:
    return local_dir(cfg, weights) or cached_snapshot(cfg.model_id, ("config.json",))


def _hf_available(cfg: EncoderConfig) -> bool:
    d = _hf_dir(cfg, None)
    return bool(d) and (d / "config.json").is_file() and find_weights_in(d, ()) is not None


class HFPooled:
    """Factory for the transformers wrapper: model outputs -> one vector per image, and
    the same forward pass's spatial output (:mod:`radsearch.encoders.spatial`)."""

    @staticmethod
    def build(model, pooling: str, name: str = "model"):
        import torch

        from radsearch.encoders.pooling import pool_map
        from radsearch.encoders.spatial import SpatialOutput, tokens_to_map

        class _Module(torch.nn.Module, SpatialOutput):
            def __init__(self):
                super().__init__()
                self.model = model
                self.pooling = pooling
                self.model_name = name
                self.is_mae = getattr(model.config, "model_type", "") == "vit_mae"

            def outputs(self, x):
                kwargs = {}
                if self.is_mae:  # identity "shuffle": every patch kept, in order
                    n = (x.shape[-1] // self.model.config.patch_size) ** 2
                    kwargs["noise"] = torch.arange(n, device=x.device, dtype=x.dtype).expand(
                        x.shape[0], n
                    )
                return self.model(pixel_values=x, **kwargs)

            def forward(self, x):
                if self.pooling == "sam-avg":
                    return pool_map(self.model.get_image_embeddings(x), "avg")
                out = self.outputs(x)
                if self.pooling == "cls":
                    return out.last_hidden_state[:, 0]
                if self.pooling == "pooler":
                    return out.pooler_output.flatten(1)
                hidden = out.last_hidden_state
                if hidden.ndim == 4:
                    return pool_map(hidden, self.pooling)
                return hidden[:, 1:].mean(dim=1)  # "avg" over patch tokens

            def spatial_map(self, x):
                """SAM's image embedding, a CNN's last map, or a ViT's last-hidden-state
                patch tokens (after the final layer norm; CLS and registers dropped)."""
                if self.pooling == "sam-avg":
                    return self.model.get_image_embeddings(x)
                hidden = self.outputs(x).last_hidden_state
                if hidden.ndim == 4:
                    return hidden
                patch = self.model.config.patch_size
                patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
                return tokens_to_map(hidden, side=x.shape[-1] // int(patch))

        return _Module()


@register_family("hf", available=_hf_available)
def load_hf(cfg: EncoderConfig, weights: str | None):
    d = _hf_dir(cfg, weights)
    if d is None or not (d / "config.json").is_file():
        if weights:
            raise EncoderError(
                f"model {cfg.name!r}: --weights {weights} is not a transformers model "
                "directory (no config.json)"
            )
        raise not_found(cfg, cfg.model_id if "/" in cfg.model_id else None)
    transformers = import_optional("transformers", cfg.name)
    with hub_offline():
        model = transformers.AutoModel.from_pretrained(
            str(d), local_files_only=True, **cfg.extra.get("from_pretrained", {})
        )
    return HFPooled.build(model, cfg.pooling, cfg.name)


def _size_of(v) -> int:
    if isinstance(v, dict):
        for k in ("height", "shortest_edge", "longest_edge", "width"):
            if k in v:
                return int(v[k])
    return int(v)


def architecture_digest(model_config: dict) -> str:
    """Digest of a model's architecture config, less the fields that name where or when
    it was saved (so a copied directory keeps its identity)."""
    mc = {
        k: v for k, v in model_config.items() if k not in ("_name_or_path", "transformers_version")
    }
    return hashlib.sha256(json.dumps(mc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_from_hf_dir(name: str, repo: str, d: Path, local: bool) -> EncoderConfig:
    """Build an ``EncoderConfig`` from a transformers repo's own config and preprocessing.

    ``local``: ``d`` is the model itself (not a cache snapshot of ``repo``), so the
    config is located there and identified by its architecture, not by its path.
    """
    mc = json.loads((d / "config.json").read_text())
    pp_path = d / "preprocessor_config.json"
    pp = json.loads(pp_path.read_text()) if pp_path.is_file() else {}
    size = pp.get("size", mc.get("image_size", 224))
    resize, input_size = "squash", _size_of(size)
    if isinstance(size, dict) and "shortest_edge" in size:
        resize = "shorter-crop"
    if isinstance(size, dict) and "longest_edge" in size:
        resize = "pad"
    if pp.get("do_center_crop") and "crop_size" in pp:
        resize, input_size = "shorter-crop", _size_of(pp["crop_size"])
    model_type = mc.get("model_type", "")
    extra: dict = {}
    if model_type == "sam":
        pooling, dim = "sam-avg", int(mc.get("vision_config", {}).get("output_channels", 256))
    elif mc.get("hidden_sizes"):
        pooling, dim = "pooler", int(mc["hidden_sizes"][-1])
    else:
        pooling, dim = "cls", int(mc.get("hidden_size", 0))
    if model_type == "vit_mae":
        extra["from_pretrained"] = {"mask_ratio": 0.0}
    location = {}
    if local:
        repo, location = f"local-dir:{model_type}", {"local_dir": str(d.resolve())}
        extra["architecture"] = architecture_digest(mc)
    return EncoderConfig(
        name=name,
        family="hf",
        model_id=repo,
        dim=dim,
        input_size=input_size,
        resize=resize,
        interpolation=_PIL_RESAMPLE.get(pp.get("resample", 3), "bicubic"),
        mean=tuple(pp.get("image_mean", (0.5,) * 3)),
        std=tuple(pp.get("image_std", (0.5,) * 3)),
        pooling=pooling,
        description=f"transformers {model_type or 'model'} {name}",
        weights_hint=f"hf download {repo}" if not local else f"keep {d} with its weights",
        extra=extra,
        location=location,
    )


@register_prefix("hf")
def _hf_prefix(rest: str) -> EncoderConfig:
    name = f"hf:{rest}"
    if Path(rest).is_dir():
        return config_from_hf_dir(name, rest, Path(rest), local=True)
    d = cached_snapshot(rest, ("config.json",))
    if d is None:
        stub = EncoderConfig(name=name, family="hf", model_id=rest, dim=0)
        raise not_found(stub, rest, what="config and weights")
    return config_from_hf_dir(name, rest, d, local=False)
