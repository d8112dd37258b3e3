"""The timm family: ``timm:<name>`` for any model timm knows.

Weights: ``model.safetensors`` / ``pytorch_model.bin`` of ``timm:<model_id>`` from
``--weights``, the config's location, or the HF cache of the model's ``hf_hub_id``
(:mod:`radsearch.encoders.hubcache`; never downloaded at run time).

Pooling: the model's own head pooling with ``num_classes=0`` (average for CNNs,
CLS/``token`` or average for ViTs as the model defines). Region features: see
:func:`_feature_map`.
"""

from __future__ import annotations

from pathlib import Path

from radsearch.encoders.base import EncoderConfig
from radsearch.encoders.hubcache import (
    cached_file,
    find_weights_in,
    hub_offline,
    import_optional,
    not_found,
    resolves,
)
from radsearch.encoders.registry import register_family, register_prefix
from radsearch.errors import EncoderError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_weights_file(cfg: EncoderConfig, weights: str | None) -> Path:
    if weights:
        p = Path(weights)
        if not p.exists():
            raise EncoderError(f"model {cfg.name!r}: --weights {weights} does not exist")
        f = p if p.is_file() else find_weights_in(p, WEIGHT_FILES)
        if f is None:
            raise EncoderError(f"model {cfg.name!r}: no weights file in {p}")
        return f
    if cfg.location.get("local_dir"):
        f = find_weights_in(Path(cfg.location["local_dir"]), WEIGHT_FILES)
        if f is not None:
            return f
    repo = cfg.extra.get("hf_hub_id")
    if repo:
        for fn in WEIGHT_FILES:
            f = cached_file(repo, fn)
            if f:
                return f
    raise not_found(cfg, repo)


def _available(cfg: EncoderConfig) -> bool:
    return resolves(timm_weights_file, cfg)


def _forward(model, x):
    return model(x)


def _feature_map(model, x):
    """Region features from the model's own ``forward_features`` (what its head pools):
    a CNN's last map (NCHW, or NHWC where the model says ``output_fmt``), a ViT's
    tokens after its final norm less its ``num_prefix_tokens`` (CLS, registers,
    distillation) on the patch grid."""
    from radsearch.encoders.spatial import tokens_to_map

    feats = model.forward_features(x)
    if feats.ndim == 3:
        return tokens_to_map(feats, prefix=getattr(model, "num_prefix_tokens", 0))
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return feats.permute(0, 3, 1, 2)
    return feats


@register_family("timm", available=_available)
def load_timm(cfg: EncoderConfig, weights: str | None):
    f = timm_weights_file(cfg, weights)
    timm = import_optional("timm", cfg.name)
    with hub_offline():
        model = timm.create_model(
            cfg.model_id,
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay={"file": str(f), "source": ""},
            **cfg.extra.get("model_kwargs", {}),
        )
    from radsearch.encoders.spatial import tower

    return tower(model, cfg.name, _forward, _feature_map)


@register_prefix("timm")
def _timm_prefix(rest: str) -> EncoderConfig:
    import torch

    name = f"timm:{rest}"
    timm = import_optional("timm", name)
    if not timm.is_model(rest):
        raise EncoderError(f"model {name!r}: timm has no model {rest!r} (see timm.list_models())")
    with torch.device("meta"):  # shapes and pretrained_cfg only, no memory, no weights
        model = timm.create_model(rest, pretrained=False, num_classes=0)
    data = timm.data.resolve_model_data_config(model)
    size = int(data["input_size"][-1])
    try:
        with torch.device("meta"):
            dim = int(model(torch.empty(1, 3, size, size)).shape[-1])
    except Exception:
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    pool = getattr(model, "global_pool", "avg")
    pool = getattr(pool, "pool_type", pool)
    pc = model.pretrained_cfg or {}
    repo = pc.get("hf_hub_id")
    return EncoderConfig(
        name=name,
        family="timm",
        model_id=rest,
        dim=dim,
        input_size=size,
        resize="squash" if data.get("crop_mode") == "squash" else "shorter-crop",
        interpolation=data.get("interpolation", "bicubic"),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        pooling=f"timm-{pool or 'avg'}",
        description=f"timm {rest}, head pooling ({pool})",
        weights_hint=f"hf download {repo}" if repo else "pass --weights FILE",
        extra={"hf_hub_id": repo} if repo else {},
    )
