"""Encoders: model name -> config (preprocessing + pooling) -> frozen ``Encoder``.

``registry`` holds names, loaders and prefixes; each family module only declares its own
(``efficientnet``, ``medsam``, ``hf``, ``openclip``, ``timm_models``, ``medclip``,
``fusion``); ``recommended`` names an encoder with its chosen recipe; ``hubcache`` finds
hub weights on disk, ``pull`` fetches them, ``accel`` swaps in faster runtimes. An
``EncoderConfig``'s hash covers what it computes, never where its files lie
(``location``).
"""

from radsearch.encoders.base import Encoder, EncoderConfig, preprocess
from radsearch.encoders.registry import (
    DEFAULT_ENCODER,
    create_encoder,
    get_config,
    list_encoders,
    register_derived,
    register_encoder,
    register_family,
    register_prefix,
    weights_available,
)

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderConfig",
    "create_encoder",
    "get_config",
    "list_encoders",
    "preprocess",
    "register_derived",
    "register_encoder",
    "register_family",
    "register_prefix",
    "weights_available",
]
