"""Encoder registry: model name -> config (preprocessing + pooling) -> frozen encoder."""

from radsearch.encoders.base import Encoder, EncoderConfig, preprocess
from radsearch.encoders.registry import (
    DEFAULT_ENCODER,
    create_encoder,
    get_config,
    list_encoders,
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
    "register_encoder",
    "register_family",
    "register_prefix",
    "weights_available",
]
