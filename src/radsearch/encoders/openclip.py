"""The open_clip family: ``biomedclip``, ``clip-vit-l14`` and ``open_clip:<arch>/<tag>``.

Local layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) +
``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` (+ tokenizer files
when the text tower is a Hugging Face model). Weights come from
:mod:`radsearch.encoders.hubcache` (never downloaded at run time).

Pooling: ``model.encode_image`` (the projected image embedding), which lives in the
same space as ``encode_text``: these encoders answer text queries
(:meth:`ClipEncoder.encode_text`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from radsearch.encoders.base import Encoder, EncoderConfig
from radsearch.encoders.hf import architecture_digest
from radsearch.encoders.hubcache import (
    CLIP_MEAN,
    CLIP_STD,
    cached_file,
    cached_snapshot,
    find_weights_in,
    hub_offline,
    import_optional,
    local_dir,
    not_found,
    resolves,
)
from radsearch.encoders.registry import register_encoder, register_family, register_prefix
from radsearch.errors import EncoderError

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


def _clip(name: str, model_id: str, dim: int, description: str, hint: str, **extra):
    """A registered CLIP-family name: 224 px, CLIP's normalisation, projected image vector."""
    register_encoder(
        EncoderConfig(
            name=name, family="open_clip", model_id=model_id, dim=dim, input_size=224,
            resize="shorter-crop", interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD,
            pooling="clip-image", description=description, weights_hint=hint, extra=extra,
        )
    )  # fmt: skip


_clip(
    "biomedclip", f"hf-hub:{BIOMEDCLIP}", 512,
    "BiomedCLIP ViT-B/16 (PMC-15M figure-caption pairs), projected image embedding; "
    "supports text queries",
    f"hf download {BIOMEDCLIP}; hf download "
    "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract config.json",
)  # fmt: skip
_clip(
    "clip-vit-l14", "ViT-L-14/openai", 768,
    "OpenAI CLIP ViT-L/14, projected image embedding; supports text queries",
    "hf download timm/vit_large_patch14_clip_224.openai",
    quick_gelu=True, hf_hub="timm/vit_large_patch14_clip_224.openai/",
)  # fmt: skip


def split_hf_hub(spec: str) -> tuple[str, str | None]:
    """open_clip's ``hf_hub`` field ``org/repo/[filename]`` -> (repo, filename or None)."""
    parts = [p for p in spec.split("/") if p]
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def _hf_hub_source(cfg: EncoderConfig, repo: str, local: Path | None) -> dict:
    if local is not None:
        raise EncoderError(
            f"model {cfg.name!r}: --weights must be a directory holding "
            f"open_clip_config.json and the weights of {repo}"
        )
    d = cached_snapshot(repo, ("open_clip_config.json",))
    if d is None or find_weights_in(d, WEIGHT_FILES) is None:
        raise not_found(cfg, repo)
    return {"model_name": f"local-dir:{d}"}


def _pretrained_file(cfg: EncoderConfig, local: Path | None) -> Path | None:
    """The weights file of an ``arch/tag`` model: ``--weights``, HF cache, open_clip cache."""
    if local is not None:
        f = local if local.is_file() else find_weights_in(local, WEIGHT_FILES)
        if f is None:
            raise EncoderError(f"model {cfg.name!r}: no weights file in {local}")
        return f
    repo, filename = split_hf_hub(cfg.extra.get("hf_hub", ""))
    if repo:
        for fn in (filename,) if filename else WEIGHT_FILES:
            f = cached_file(repo, fn)
            if f:
                return f
    url = cfg.extra.get("url")
    if url:  # open_clip's own download cache for weights hosted outside the HF hub
        f = Path.home() / ".cache" / "clip" / os.path.basename(url)
        if f.is_file():
            return f
    return None


def open_clip_source(cfg: EncoderConfig, weights: str | None) -> dict:
    """Where the open_clip model comes from: kwargs for ``open_clip.create_model``.

    Raises ``EncoderError`` when nothing local holds the weights.
    """
    local = local_dir(cfg, weights)
    if weights and not local.exists():
        raise EncoderError(f"model {cfg.name!r}: --weights {weights} does not exist")
    if local is not None and local.is_dir() and (local / "open_clip_config.json").is_file():
        if find_weights_in(local, WEIGHT_FILES) is None:
            raise EncoderError(f"model {cfg.name!r}: no weights file in {local}")
        return {"model_name": f"local-dir:{local}"}
    if cfg.model_id.startswith("hf-hub:"):
        return _hf_hub_source(cfg, cfg.model_id[len("hf-hub:") :], local)
    arch = cfg.model_id.partition("/")[0]
    f = _pretrained_file(cfg, local)
    if f is None:
        raise not_found(cfg, split_hf_hub(cfg.extra.get("hf_hub", ""))[0] or None)
    return {
        "model_name": arch,
        "force_quick_gelu": bool(cfg.extra.get("quick_gelu")),
        "pretrained": str(f),
    }


def _available(cfg: EncoderConfig) -> bool:
    return resolves(open_clip_source, cfg)


class ClipEncoder(Encoder):
    """An ``Encoder`` with a text tower: texts map into the space of the image vectors."""

    supports_text = True

    def __init__(self, config: EncoderConfig, module, device: str = "cpu"):
        model, self.tokenizer = module
        from radsearch.encoders.spatial import tower

        # forward = encode_image (the projected vector); region features: _last_block_map
        super().__init__(config, tower(model, config.name, _encode_image, _last_block_map), device)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            out = self.module.model.encode_text(tokens)
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)


def _encode_image(model, x):
    return model.encode_image(x)


def _last_block_map(model, x):
    """Region features: the image tower's last block through open_clip's own
    ``forward_intermediates`` (ViT: patch tokens after ``ln_post``, CLS dropped; a timm
    trunk such as BiomedCLIP's: its tokens after its final norm; ResNet: its last map),
    unprojected (the projection is trained on the pooled vector only)."""
    out = model.visual.forward_intermediates(
        x, indices=1, normalize_intermediates=True, intermediates_only=True
    )
    return out["image_intermediates"][-1]


@register_family("open_clip", available=_available, encoder=ClipEncoder)
def load_open_clip(cfg: EncoderConfig, weights: str | None):
    """``(open_clip model, tokenizer)`` built from local files only."""
    source = open_clip_source(cfg, weights)
    open_clip = import_optional("open_clip", cfg.name)
    with hub_offline():
        try:
            model = open_clip.create_model(**source, device="cpu")
            tokenizer = open_clip.get_tokenizer(source["model_name"])
        except Exception as e:  # e.g. a Hugging Face text tower whose config is not cached
            raise EncoderError(
                f"model {cfg.name!r}: could not build from local files ({type(e).__name__}: "
                f"{e}); {cfg.weights_hint}"
            ) from None
    return model, tokenizer


def _resize_mode(mode: str) -> str:
    return {"squash": "squash", "longest": "pad"}.get(mode, "shorter-crop")


def config_from_open_clip_dir(name: str, d: Path) -> EncoderConfig:
    """``EncoderConfig`` of an open_clip directory's ``open_clip_config.json``, located
    there and identified by its architecture (``model_cfg``), not by its path."""
    oc = json.loads((d / "open_clip_config.json").read_text())
    mc, pp = oc["model_cfg"], oc.get("preprocess_cfg", {})
    size = mc["vision_cfg"].get("image_size", 224)
    return EncoderConfig(
        name=name,
        family="open_clip",
        model_id="local-dir",
        dim=int(mc["embed_dim"]),
        input_size=int(size[0] if isinstance(size, list) else size),
        resize=_resize_mode(pp.get("resize_mode", "shortest")),
        interpolation=pp.get("interpolation", "bicubic"),
        mean=tuple(pp.get("mean", CLIP_MEAN)),
        std=tuple(pp.get("std", CLIP_STD)),
        pooling="clip-image",
        description=f"open_clip model in {d}",
        weights_hint=f"keep {d} with its weights",
        extra={"architecture": architecture_digest(mc)},
        location={"local_dir": str(d.resolve())},
    )


def _from_arch_tag(name: str, rest: str) -> EncoderConfig:
    open_clip = import_optional("open_clip", name)
    arch, _, tag = rest.partition("/")
    mc = open_clip.get_model_config(arch)
    if mc is None:
        raise EncoderError(f"model {name!r}: unknown open_clip architecture {arch!r}")
    pc = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if not pc:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise EncoderError(f"model {name!r}: use open_clip:{arch}/<tag> with a tag from: {tags}")
    repo, _ = split_hf_hub(pc.get("hf_hub", ""))
    return EncoderConfig(
        name=name,
        family="open_clip",
        model_id=f"{arch}/{tag}",
        dim=int(mc["embed_dim"]),
        input_size=int(mc["vision_cfg"].get("image_size", 224)),
        resize=_resize_mode(pc.get("resize_mode", "shortest")),
        interpolation=pc.get("interpolation", "bicubic"),
        mean=tuple(pc.get("mean", CLIP_MEAN)),
        std=tuple(pc.get("std", CLIP_STD)),
        pooling="clip-image",
        description=f"open_clip {arch} ({tag}), projected image embedding",
        weights_hint=f"hf download {repo}" if repo else f"download {pc.get('url')}",
        extra={
            "quick_gelu": bool(pc.get("quick_gelu")),
            "hf_hub": pc.get("hf_hub", ""),
            "url": pc.get("url", ""),
        },
    )


@register_prefix("open_clip")
def _open_clip_prefix(rest: str) -> EncoderConfig:
    name = f"open_clip:{rest}"
    if Path(rest).is_dir():
        if not (Path(rest) / "open_clip_config.json").is_file():
            raise EncoderError(f"model {name!r}: {rest} has no open_clip_config.json")
        return config_from_open_clip_dir(name, Path(rest))
    if rest.startswith("hf-hub:"):
        repo = rest[len("hf-hub:") :]
        d = cached_snapshot(repo, ("open_clip_config.json",))
        if d is None:
            stub = EncoderConfig(name=name, family="open_clip", model_id=rest, dim=0)
            raise not_found(stub, repo, what="config and weights")
        return config_from_open_clip_dir(name, d).replace(
            model_id=rest, extra={}, location={}, weights_hint=f"hf download {repo}"
        )
    return _from_arch_tag(name, rest)
