"""Hub-backed families: transformers (``hf``), ``open_clip`` and ``timm``.

Weights are only ever read from disk, never downloaded (``local_files_only``
everywhere, Hub offline mode while building), in this order:
1. ``weights=`` / ``--weights PATH`` (a file or a directory);
2. a local directory named by the model string (``hf:/dir``, ``open_clip:/dir``, or a
   checkpoint directory with ``radsearch_encoder.json``);
3. the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), filled once on a connected machine with
   ``hf download <repo>``.
None found -> ``EncoderError`` naming the model, where it looked and how to fix it.

Local checkpoint directory layout (``radsearch_encoder.json`` = ``EncoderConfig.to_dict()``):
- family ``hf``: ``config.json`` + ``model.safetensors`` (``save_pretrained`` output);
- family ``open_clip``: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) +
  ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` (+ tokenizer files
  when the text tower is a Hugging Face model);
- family ``timm``: ``model.safetensors`` / ``pytorch_model.bin`` of ``timm:<model_id>``.

Pooling per model (the vector each one returns before L2 normalisation):
- ``dinov2-b14``, ``rad-dino``, ``vit-b16``: CLS token of the last hidden state (after
  the final layer norm), 768-d.
- ``vit-mae-b``: same, with ``mask_ratio=0`` and identity patch order, so every patch
  is seen and the result is deterministic.
- ``sam-vit-b``: ``SamModel.get_image_embeddings`` (256x64x64) mean-pooled, 256-d.
- ``resnet50``: the model's pooler output (global average of the last stage), 2048-d.
- ``hf:<repo>``: ``pooler`` for CNNs (configs with ``hidden_sizes``), SAM as above,
  CLS otherwise.
- ``biomedclip``, ``clip-vit-l14``, ``open_clip:*``: ``model.encode_image`` (projected
  image embedding), which lives in the same space as ``encode_text``.
- ``timm:<name>``: the model's own head pooling with ``num_classes=0`` (average for
  CNNs, CLS/``token`` or average for ViTs as the model defines).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from radsearch.encoders.base import Encoder, EncoderConfig
from radsearch.encoders.registry import register_encoder, register_family, register_prefix
from radsearch.errors import EncoderError

HUB_EXTRA = "pip install 'radsearch[hub]'"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


# --- registered names --------------------------------------------------------------


def _hf(name, repo, dim, size, resize, mean, std, pooling, interp="bicubic", desc="", **extra):
    return register_encoder(
        EncoderConfig(
            name=name, family="hf", model_id=repo, dim=dim, input_size=size, resize=resize,
            interpolation=interp, mean=mean, std=std, pooling=pooling, description=desc,
            weights_hint=f"hf download {repo}", extra=extra,
        )
    )


_hf("dinov2-b14", "facebook/dinov2-base", 768, 224, "shorter-crop", IMAGENET_MEAN,
    IMAGENET_STD, "cls", desc="DINOv2 ViT-B/14 (self-supervised, natural images), CLS token")
_hf("rad-dino", "microsoft/rad-dino", 768, 518, "shorter-crop", (0.5307,) * 3, (0.2583,) * 3,
    "cls", desc="RAD-DINO (DINOv2 ViT-B/14 trained on chest X-rays), CLS token")
_hf("vit-b16", "google/vit-base-patch16-224-in21k", 768, 224, "squash", (0.5,) * 3, (0.5,) * 3,
    "cls", interp="bilinear", desc="ViT-B/16 ImageNet-21k, CLS token")
_hf("vit-mae-b", "facebook/vit-mae-base", 768, 224, "squash", IMAGENET_MEAN, IMAGENET_STD,
    "cls", interp="bilinear", desc="ViT-MAE base (masking off), CLS token",
    from_pretrained={"mask_ratio": 0.0})
_hf("sam-vit-b", "facebook/sam-vit-base", 256, 1024, "pad", IMAGENET_MEAN, IMAGENET_STD,
    "sam-avg", interp="bilinear", desc="SAM ViT-B image embedding, mean-pooled")
_hf("resnet50", "microsoft/resnet-50", 2048, 224, "shorter-crop", IMAGENET_MEAN, IMAGENET_STD,
    "pooler", desc="ResNet-50 ImageNet-1k, global average pooled")

_BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
register_encoder(
    EncoderConfig(
        name="biomedclip", family="open_clip", model_id=f"hf-hub:{_BIOMEDCLIP}", dim=512,
        input_size=224, resize="shorter-crop", interpolation="bicubic", mean=CLIP_MEAN,
        std=CLIP_STD, pooling="clip-image",
        description="BiomedCLIP ViT-B/16 (PMC-15M figure-caption pairs), projected image "
        "embedding; supports text queries",
        weights_hint=f"hf download {_BIOMEDCLIP}; hf download "
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract config.json",
    )
)
register_encoder(
    EncoderConfig(
        name="clip-vit-l14", family="open_clip", model_id="ViT-L-14/openai", dim=768,
        input_size=224, resize="shorter-crop", interpolation="bicubic", mean=CLIP_MEAN,
        std=CLIP_STD, pooling="clip-image",
        description="OpenAI CLIP ViT-L/14, projected image embedding; supports text queries",
        weights_hint="hf download timm/vit_large_patch14_clip_224.openai",
        extra={"quick_gelu": True, "hf_hub": "timm/vit_large_patch14_clip_224.openai/"},
    )
)


# --- shared helpers -----------------------------------------------------------------


def _import(module: str, cfg_name: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise EncoderError(
            f"model {cfg_name!r}: needs the {module} package; {HUB_EXTRA}"
        ) from None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def cached_file(repo_id: str, filename: str) -> Path | None:
    """A file of ``repo_id`` in the local HF cache, or None. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()))
    except Exception:  # malformed repo id and the like
        return None
    return Path(found) if isinstance(found, str) and Path(found).exists() else None


def _cached_snapshot(repo_id: str, markers: tuple[str, ...]) -> Path | None:
    for marker in markers:
        found = cached_file(repo_id, marker)
        if found:
            return found.parent
    return None


def _not_found(cfg: EncoderConfig, repo: str | None, what: str = "weights") -> EncoderError:
    where = ["--weights"]
    if cfg.extra.get("local_dir"):
        where.append(cfg.extra["local_dir"])
    if repo:
        where.append(f"HF cache {hf_cache_dir()} for {repo}")
    fix = f"download them once with `hf download {repo}` (older huggingface_hub: " \
          f"`huggingface-cli download {repo}`) on a connected machine and copy the cache here, " \
          "or pass --weights DIR" if repo else "pass --weights PATH"
    return EncoderError(f"model {cfg.name!r}: {what} not found (looked in: {', '.join(where)}); {fix}")


@contextlib.contextmanager
def hub_offline():
    """Hub offline mode while building, so nothing a library calls can reach the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc
    except ImportError:
        hc = None
    old_const = getattr(hc, "HF_HUB_OFFLINE", None)
    if hc is not None:
        hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _find_weights_in(directory: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    return None


# --- transformers ("hf") -----------------------------------------------------------


def _hf_dir(cfg: EncoderConfig, weights: str | None) -> Path | None:
    if weights:
        return Path(weights)
    if cfg.extra.get("local_dir"):
        return Path(cfg.extra["local_dir"])
    return _cached_snapshot(cfg.model_id, ("config.json",))


def _hf_available(cfg: EncoderConfig) -> bool:
    d = _hf_dir(cfg, None)
    return bool(d) and (d / "config.json").is_file() and _find_weights_in(d, ()) is not None


class HFPooled:
    """Factory for the transformers wrapper: model outputs -> one vector per image."""

    @staticmethod
    def build(model, pooling: str):
        import torch

        from radsearch.encoders.pooling import pool_map

        class _Module(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                self.pooling = pooling
                self.is_mae = getattr(model.config, "model_type", "") == "vit_mae"

            def forward(self, x):
                if self.pooling == "sam-avg":
                    return pool_map(self.model.get_image_embeddings(x), "avg")
                kwargs = {}
                if self.is_mae:  # identity "shuffle": every patch kept, in order
                    n = (x.shape[-1] // self.model.config.patch_size) ** 2
                    kwargs["noise"] = torch.arange(n, device=x.device, dtype=x.dtype).expand(
                        x.shape[0], n
                    )
                out = self.model(pixel_values=x, **kwargs)
                if self.pooling == "cls":
                    return out.last_hidden_state[:, 0]
                if self.pooling == "pooler":
                    return out.pooler_output.flatten(1)
                hidden = out.last_hidden_state
                if hidden.ndim == 4:
                    return pool_map(hidden, self.pooling)
                return hidden[:, 1:].mean(dim=1)  # "avg" over patch tokens

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
        raise _not_found(cfg, cfg.model_id if "/" in cfg.model_id else None)
    transformers = _import("transformers", cfg.name)
    with hub_offline():
        model = transformers.AutoModel.from_pretrained(
            str(d), local_files_only=True, **cfg.extra.get("from_pretrained", {})
        )
    return HFPooled.build(model, cfg.pooling)


def _size_of(v) -> int:
    if isinstance(v, dict):
        for k in ("height", "shortest_edge", "longest_edge", "width"):
            if k in v:
                return int(v[k])
    return int(v)


def config_from_hf_dir(name: str, repo: str, d: Path, local: bool) -> EncoderConfig:
    """Build an ``EncoderConfig`` from a transformers repo's own config and preprocessing."""
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
    if local:
        extra["local_dir"] = str(d.resolve())
    return EncoderConfig(
        name=name, family="hf", model_id=repo, dim=dim, input_size=input_size, resize=resize,
        interpolation=_PIL_RESAMPLE.get(pp.get("resample", 3), "bicubic"),
        mean=tuple(pp.get("image_mean", (0.5,) * 3)), std=tuple(pp.get("image_std", (0.5,) * 3)),
        pooling=pooling, description=f"transformers {model_type or 'model'} {repo}",
        weights_hint=f"hf download {repo}", extra=extra,
    )


@register_prefix("hf")
def _hf_prefix(rest: str) -> EncoderConfig:
    name = f"hf:{rest}"
    if Path(rest).is_dir():
        return config_from_hf_dir(name, rest, Path(rest), local=True)
    d = _cached_snapshot(rest, ("config.json",))
    if d is None:
        stub = EncoderConfig(name=name, family="hf", model_id=rest, dim=0)
        raise _not_found(stub, rest, what="config and weights")
    return config_from_hf_dir(name, rest, d, local=False)


# --- open_clip ------------------------------------------------------------------------


def _split_hf_hub(spec: str) -> tuple[str, str | None]:
    """open_clip's ``hf_hub`` field ``org/repo/[filename]`` -> (repo, filename or None)."""
    parts = [p for p in spec.split("/") if p]
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def _open_clip_source(cfg: EncoderConfig, weights: str | None) -> dict:
    """Where the open_clip model comes from: kwargs for ``open_clip.create_model``.

    Raises ``EncoderError`` when nothing local holds the weights.
    """
    model_id = cfg.model_id
    local = Path(weights) if weights else (
        Path(cfg.extra["local_dir"]) if cfg.extra.get("local_dir") else None
    )
    if weights and not local.exists():
        raise EncoderError(f"model {cfg.name!r}: --weights {weights} does not exist")
    if local is not None and local.is_dir() and (local / "open_clip_config.json").is_file():
        if _find_weights_in(local, _OPEN_CLIP_WEIGHTS) is None:
            raise EncoderError(f"model {cfg.name!r}: no weights file in {local}")
        return {"model_name": f"local-dir:{local}"}
    if model_id.startswith("hf-hub:"):
        repo = model_id[len("hf-hub:"):]
        if local is not None:
            raise EncoderError(
                f"model {cfg.name!r}: --weights must be a directory holding "
                f"open_clip_config.json and the weights of {repo}"
            )
        d = _cached_snapshot(repo, ("open_clip_config.json",))
        if d is None or _find_weights_in(d, _OPEN_CLIP_WEIGHTS) is None:
            raise _not_found(cfg, repo)
        return {"model_name": f"local-dir:{d}"}
    arch, _, tag = model_id.partition("/")
    kwargs = {"model_name": arch, "force_quick_gelu": bool(cfg.extra.get("quick_gelu"))}
    if local is not None:
        f = local if local.is_file() else _find_weights_in(local, _OPEN_CLIP_WEIGHTS)
        if f is None:
            raise EncoderError(f"model {cfg.name!r}: no weights file in {local}")
        return {**kwargs, "pretrained": str(f)}
    repo, filename = _split_hf_hub(cfg.extra.get("hf_hub", ""))
    if repo:
        for fn in (filename,) if filename else _OPEN_CLIP_WEIGHTS:
            f = cached_file(repo, fn)
            if f:
                return {**kwargs, "pretrained": str(f)}
    url = cfg.extra.get("url")
    if url:  # open_clip's own download cache for weights hosted outside the HF hub
        f = Path.home() / ".cache" / "clip" / os.path.basename(url)
        if f.is_file():
            return {**kwargs, "pretrained": str(f)}
    raise _not_found(cfg, repo or None)


def _open_clip_available(cfg: EncoderConfig) -> bool:
    try:
        _open_clip_source(cfg, None)
        return True
    except EncoderError:
        return False


class OpenClipModule:
    """Factory for the open_clip wrapper: ``forward`` = ``encode_image``; keeps the tokenizer."""

    @staticmethod
    def build(model, tokenizer):
        import torch

        class _Module(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                self.tokenizer = tokenizer

            def forward(self, x):
                return self.model.encode_image(x)

            def encode_text_tokens(self, tokens):
                return self.model.encode_text(tokens)

        return _Module()


@register_family("open_clip", available=_open_clip_available)
def load_open_clip(cfg: EncoderConfig, weights: str | None):
    source = _open_clip_source(cfg, weights)
    open_clip = _import("open_clip", cfg.name)
    name = source["model_name"]
    with hub_offline():
        try:
            model = open_clip.create_model(**source, device="cpu")
            tokenizer = open_clip.get_tokenizer(name)
        except EncoderError:
            raise
        except Exception as e:  # e.g. a Hugging Face text tower whose config is not cached
            raise EncoderError(
                f"model {cfg.name!r}: could not build from local files ({type(e).__name__}: "
                f"{e}); {cfg.weights_hint}"
            ) from None
    return OpenClipModule.build(model, tokenizer)


def _resize_mode(mode: str) -> str:
    return {"squash": "squash", "longest": "pad"}.get(mode, "shorter-crop")


def config_from_open_clip_dir(name: str, d: Path) -> EncoderConfig:
    """``EncoderConfig`` from an open_clip directory's ``open_clip_config.json``."""
    oc = json.loads((d / "open_clip_config.json").read_text())
    mc, pp = oc["model_cfg"], oc.get("preprocess_cfg", {})
    size = mc["vision_cfg"].get("image_size", 224)
    return EncoderConfig(
        name=name, family="open_clip", model_id=f"local-dir:{d.resolve()}",
        dim=int(mc["embed_dim"]), input_size=int(size[0] if isinstance(size, list) else size),
        resize=_resize_mode(pp.get("resize_mode", "shortest")),
        interpolation=pp.get("interpolation", "bicubic"),
        mean=tuple(pp.get("mean", CLIP_MEAN)), std=tuple(pp.get("std", CLIP_STD)),
        pooling="clip-image", description=f"open_clip model in {d}",
        weights_hint=f"keep {d} with its weights", extra={"local_dir": str(d.resolve())},
    )


@register_prefix("open_clip")
def _open_clip_prefix(rest: str) -> EncoderConfig:
    name = f"open_clip:{rest}"
    if Path(rest).is_dir():
        if not (Path(rest) / "open_clip_config.json").is_file():
            raise EncoderError(f"model {name!r}: {rest} has no open_clip_config.json")
        return config_from_open_clip_dir(name, Path(rest))
    if rest.startswith("hf-hub:"):
        repo = rest[len("hf-hub:"):]
        d = _cached_snapshot(repo, ("open_clip_config.json",))
        stub = EncoderConfig(name=name, family="open_clip", model_id=rest, dim=0)
        if d is None:
            raise _not_found(stub, repo, what="config and weights")
        return config_from_open_clip_dir(name, d).replace(
            model_id=rest, extra={}, weights_hint=f"hf download {repo}"
        )
    open_clip = _import("open_clip", name)
    arch, _, tag = rest.partition("/")
    mc = open_clip.get_model_config(arch)
    if mc is None:
        raise EncoderError(f"model {name!r}: unknown open_clip architecture {arch!r}")
    pc = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if not pc:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise EncoderError(f"model {name!r}: use open_clip:{arch}/<tag> with a tag from: {tags}")
    repo, _ = _split_hf_hub(pc.get("hf_hub", ""))
    return EncoderConfig(
        name=name, family="open_clip", model_id=f"{arch}/{tag}", dim=int(mc["embed_dim"]),
        input_size=int(mc["vision_cfg"].get("image_size", 224)),
        resize=_resize_mode(pc.get("resize_mode", "shortest")),
        interpolation=pc.get("interpolation", "bicubic"),
        mean=tuple(pc.get("mean", CLIP_MEAN)), std=tuple(pc.get("std", CLIP_STD)),
        pooling="clip-image", description=f"open_clip {arch} ({tag}), projected image embedding",
        weights_hint=f"hf download {repo}" if repo else f"download {pc.get('url')}",
        extra={"quick_gelu": bool(pc.get("quick_gelu")), "hf_hub": pc.get("hf_hub", ""),
               "url": pc.get("url", "")},
    )


def encode_text(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Texts -> L2-normalised vectors in the same space as ``encoder``'s image vectors.

    Only CLIP-family (open_clip) encoders have a text tower; others raise ``EncoderError``.
    """
    import torch

    module = encoder.module
    if not hasattr(module, "encode_text_tokens"):
        raise EncoderError(
            f"model {encoder.config.name!r} has no text encoder; text queries need a CLIP-family "
            "model such as biomedclip or clip-vit-l14"
        )
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    tokens = module.tokenizer(list(texts)).to(encoder.device)
    with torch.inference_mode():
        out = module.encode_text_tokens(tokens)
        out = torch.nn.functional.normalize(out.float(), dim=-1)
    return out.cpu().numpy().astype(np.float32, copy=False)


# --- timm -------------------------------------------------------------------------------


def _timm_file(cfg: EncoderConfig, weights: str | None) -> Path:
    if weights:
        p = Path(weights)
        if not p.exists():
            raise EncoderError(f"model {cfg.name!r}: --weights {weights} does not exist")
        f = p if p.is_file() else _find_weights_in(p, _TIMM_WEIGHTS)
        if f is None:
            raise EncoderError(f"model {cfg.name!r}: no weights file in {p}")
        return f
    if cfg.extra.get("local_dir"):
        f = _find_weights_in(Path(cfg.extra["local_dir"]), _TIMM_WEIGHTS)
        if f is not None:
            return f
    repo = cfg.extra.get("hf_hub_id")
    if repo:
        for fn in _TIMM_WEIGHTS:
            f = cached_file(repo, fn)
            if f:
                return f
    raise _not_found(cfg, repo)


def _timm_available(cfg: EncoderConfig) -> bool:
    try:
        _timm_file(cfg, None)
        return True
    except EncoderError:
        return False


@register_family("timm", available=_timm_available)
def load_timm(cfg: EncoderConfig, weights: str | None):
    f = _timm_file(cfg, weights)
    timm = _import("timm", cfg.name)
    with hub_offline():
        return timm.create_model(
            cfg.model_id, pretrained=True, num_classes=0,
            pretrained_cfg_overlay={"file": str(f), "source": ""},
            **cfg.extra.get("model_kwargs", {}),
        )


@register_prefix("timm")
def _timm_prefix(rest: str) -> EncoderConfig:
    import torch

    name = f"timm:{rest}"
    timm = _import("timm", name)
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
        name=name, family="timm", model_id=rest, dim=dim, input_size=size,
        resize="squash" if data.get("crop_mode") == "squash" else "shorter-crop",
        interpolation=data.get("interpolation", "bicubic"),
        mean=tuple(data["mean"]), std=tuple(data["std"]), pooling=f"timm-{pool or 'avg'}",
        description=f"timm {rest}, head pooling ({pool})",
        weights_hint=f"hf download {repo}" if repo else "pass --weights FILE",
        extra={"hf_hub_id": repo} if repo else {},
    )
