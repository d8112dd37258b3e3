"""One registry of encoder names -> configs, and one loader per family.

Family modules only declare data: concrete configs (``register_encoder``), configs
defined in terms of other names (``register_derived``: feature variants, named
fusions, resolved on first use), loaders (``register_family``) and open-ended name
prefixes (``register_prefix``). Nothing resolves another name while a module is being
imported, so the order in which modules are imported does not matter;
``BUILTIN_FAMILIES`` lists the modules imported once, in a fixed order, before the
first look-up (as timm's ``models/__init__.py`` does for its ``_registry``).

``get_config(name)`` resolves registered names and the open-ended forms
``hf:<repo id>``, ``open_clip:<arch>/<tag>``, ``timm:<name>``, ``fusion:A+B`` and a
local checkpoint directory (one holding ``radsearch_encoder.json``). ``create_encoder``
finds the family's loader, which resolves weights (``weights=`` path, local HF cache,
or the package that ships them) and fails fast with ``EncoderError`` when they are absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from radsearch.encoders.base import Encoder, EncoderConfig
from radsearch.errors import EncoderError

DEFAULT_ENCODER = "efficientnet-lite0"
CHECKPOINT_FILE = "radsearch_encoder.json"
# the built-in family modules, imported once in this order before the first look-up
BUILTIN_FAMILIES = (
    "efficientnet",
    "medsam",
    "hf",
    "openclip",
    "timm_models",
    "medclip",
    "fusion",
    "recommended",
)


@dataclass(frozen=True)
class Family:
    """How a family turns a config into an ``Encoder``.

    ``loader(config, weights) -> module``; ``available(config) -> bool`` (weights on
    disk here); ``encoder(config, module, device) -> Encoder`` for families whose
    encoders do more than the base class (text towers, fusions).
    """

    loader: Callable
    available: Callable[[EncoderConfig], bool]
    encoder: Callable[..., Encoder] = Encoder


_CONFIGS: dict[str, EncoderConfig] = {}
_DERIVED: dict[str, Callable[[], EncoderConfig]] = {}
_FAMILIES: dict[str, Family] = {}
_PREFIXES: dict[str, Callable[[str], EncoderConfig]] = {}
_loaded = False


def register_encoder(config: EncoderConfig) -> EncoderConfig:
    _CONFIGS[config.name] = config
    _DERIVED.pop(config.name, None)
    return config


def register_derived(name: str, build: Callable[[], EncoderConfig]) -> None:
    """Register ``name`` whose config ``build()`` computes from other names, when asked."""
    _CONFIGS.pop(name, None)
    _DERIVED[name] = build


def register_family(
    family: str,
    available: Callable[[EncoderConfig], bool] | None = None,
    encoder: Callable[..., Encoder] = Encoder,
):
    """Decorator: ``loader(config, weights) -> nn.Module`` for every config of ``family``."""

    def deco(loader):
        _FAMILIES[family] = Family(loader, available or (lambda cfg: False), encoder)
        return loader

    return deco


def register_prefix(prefix: str):
    """Decorator: ``factory(rest) -> EncoderConfig`` for names like ``prefix:rest``."""

    def deco(factory):
        _PREFIXES[prefix] = factory
        return factory

    return deco


def load_builtin_families() -> None:
    """Import every built-in family module (once, in ``BUILTIN_FAMILIES`` order)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_FAMILIES:
        import_module(f"radsearch.encoders.{module}")


def registered_names() -> list[str]:
    load_builtin_families()
    return sorted({*_CONFIGS, *_DERIVED})


def get_config(name: str) -> EncoderConfig:
    """Resolve a model string to its config, or raise ``EncoderError`` naming it."""
    load_builtin_families()
    if name in _CONFIGS:
        return _CONFIGS[name]
    if name in _DERIVED:
        _CONFIGS[name] = _DERIVED.pop(name)()
        return _CONFIGS[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXES:
        return _PREFIXES[prefix](rest)
    local = Path(name)
    if local.is_dir() and (local / CHECKPOINT_FILE).exists():
        return config_from_checkpoint_dir(local)
    known = ", ".join(registered_names())
    raise EncoderError(
        f"unknown model {name!r}; known: {known}; or use hf:<repo>, open_clip:<arch>/<tag>, "
        "timm:<name>, fusion:A+B or a local checkpoint directory"
    )


def config_from_checkpoint_dir(local: Path) -> EncoderConfig:
    """The config saved in ``local/radsearch_encoder.json``, located at ``local``."""
    cfg = EncoderConfig.from_dict(json.loads((local / CHECKPOINT_FILE).read_text()))
    return cfg.replace(
        name=str(local), location={**cfg.location, "local_dir": str(local.resolve())}
    )


def _family(cfg: EncoderConfig) -> Family:
    load_builtin_families()
    if cfg.family not in _FAMILIES:
        raise EncoderError(f"model {cfg.name!r}: no loader for family {cfg.family!r}")
    return _FAMILIES[cfg.family]


def create_encoder(
    name: str | EncoderConfig = DEFAULT_ENCODER, weights: str | None = None, device: str = "cpu"
) -> Encoder:
    """Build a frozen encoder ready for ``Encoder.encode``."""
    cfg = name if isinstance(name, EncoderConfig) else get_config(name)
    family = _family(cfg)
    return family.encoder(cfg, family.loader(cfg, weights), device=device)


def weights_available(cfg: EncoderConfig) -> bool:
    try:
        return bool(_family(cfg).available(cfg))
    except Exception:
        return False


def recommended_names() -> set[str]:
    """Names that come with a shipped recipe (:mod:`radsearch.encoders.recommended`)."""
    from radsearch.encoders.recommended import shipped

    return set(shipped())


def list_encoders() -> list[dict]:
    """Every registered encoder with its dim, family and whether its weights are here."""
    rows = []
    for name in registered_names():
        cfg = get_config(name)
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
                "recommended": name in recommended_names(),
            }
        )
    return rows
