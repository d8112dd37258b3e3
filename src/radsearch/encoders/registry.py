"""One registry of encoder names -> configs, and one loader per family.

``get_config(name)`` resolves registered names and the open-ended forms
``hf:<repo id>``, ``open_clip:<arch>/<tag>``, ``timm:<name>`` and a local checkpoint
directory (one holding ``radsearch_encoder.json``). ``create_encoder`` finds the
family's loader, which resolves weights (``weights=`` path, local HF cache, or the
package that ships them) and fails fast with ``EncoderError`` when they are absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from radsearch.encoders.base import Encoder, EncoderConfig
from radsearch.errors import EncoderError

DEFAULT_ENCODER = "efficientnet-lite0"

_CONFIGS: dict[str, EncoderConfig] = {}
# family -> (loader(config, weights) -> torch module, available(config) -> bool)
_FAMILIES: dict[str, tuple[Callable, Callable]] = {}
# prefix -> factory(rest_of_name) -> EncoderConfig, for open-ended names
_PREFIXES: dict[str, Callable[[str], EncoderConfig]] = {}


def register_encoder(config: EncoderConfig) -> EncoderConfig:
    _CONFIGS[config.name] = config
    return config


def register_family(family: str, available: Callable[[EncoderConfig], bool] | None = None):
    """Decorator: ``loader(config, weights) -> nn.Module`` for every config of ``family``."""

    def deco(loader):
        _FAMILIES[family] = (loader, available or (lambda cfg: False))
        return loader

    return deco


def register_prefix(prefix: str):
    """Decorator: ``factory(rest) -> EncoderConfig`` for names like ``prefix:rest``."""

    def deco(factory):
        _PREFIXES[prefix] = factory
        return factory

    return deco


def _load_builtin_families() -> None:
    # Importing the family modules registers their configs and loaders.
    from radsearch.encoders import efficientnet, fusion, hub, medsam  # noqa: F401


def get_config(name: str) -> EncoderConfig:
    """Resolve a model string to its config, or raise ``EncoderError`` naming it."""
    _load_builtin_families()
    if name in _CONFIGS:
        return _CONFIGS[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXES:
        return _PREFIXES[prefix](rest)
    local = Path(name)
    if local.is_dir() and (local / "radsearch_encoder.json").exists():
        cfg = EncoderConfig.from_dict(json.loads((local / "radsearch_encoder.json").read_text()))
        return cfg.replace(name=str(local), extra={**cfg.extra, "local_dir": str(local.resolve())})
    known = ", ".join(sorted(_CONFIGS))
    raise EncoderError(
        f"unknown model {name!r}; known: {known}; or use hf:<repo>, open_clip:<arch>/<tag>, "
        "timm:<name> or a local checkpoint directory"
    )


def create_encoder(
    name: str | EncoderConfig = DEFAULT_ENCODER, weights: str | None = None, device: str = "cpu"
) -> Encoder:
    """Build a frozen encoder ready for ``Encoder.encode``."""
    cfg = name if isinstance(name, EncoderConfig) else get_config(name)
    _load_builtin_families()
    if cfg.family not in _FAMILIES:
        raise EncoderError(f"model {cfg.name!r}: no loader for family {cfg.family!r}")
    loader, _ = _FAMILIES[cfg.family]
    module = loader(cfg, weights)
    if hasattr(module, "as_encoder"):  # families with their own Encoder subclass (fusion)
        return module.as_encoder(cfg, device)
    return Encoder(cfg, module, device=device)


def weights_available(cfg: EncoderConfig) -> bool:
    _load_builtin_families()
    try:
        return bool(_FAMILIES[cfg.family][1](cfg))
    except Exception:
        return False


def list_encoders() -> list[dict]:
    """Every registered encoder with its dim, family and whether its weights are here."""
    _load_builtin_families()
    rows = []
    for name in sorted(_CONFIGS):
        cfg = _CONFIGS[name]
        rows.append(
            {
                "name": name,
                "family": cfg.family,
                "dim": cfg.dim,
                "input_size": cfg.input_size,
                "pooling": cfg.pooling,
                "weights_here": weights_available(cfg),
                "source": cfg.model_id,
                "description": cfg.description,
            }
        )
    return rows
