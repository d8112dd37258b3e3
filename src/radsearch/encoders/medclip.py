"""MedCLIP (Wang et al., EMNLP 2022), the ViT variant: ``medclip``, given with ``--weights``.

The released checkpoint is the whole vision-text model's ``pytorch_model.bin``; its
image tower (``MedCLIPVisionModelViT``) is a Swin-tiny (``SwinModel``, patch 4, window
7, 224 px) under ``vision_model.model.`` and a bias-free linear projection 768 -> 512
under ``vision_model.projection_head.``; the text tower and ``logit_scale`` are ignored.
The Swin architecture is transformers' ``SwinConfig`` default (which is Swin-tiny), so
nothing is downloaded: MedCLIP's own package fetches the weights and the Swin config
from the network at run time, radsearch reads only the given file. The Swin keys go
through transformers' own loading, which maps the names older transformers versions
wrote (``attention.self.query`` ...) to the current ones.

Pooling (MedCLIP's ``encode_image``): the Swin pooler output (mean of the final-layer-
normalised tokens) through the projection head, 512-d, the space its text tower
shares. Preprocessing as MedCLIP's processor: padded to a square, 224 px bicubic,
one grey-level mean/std (0.586, 0.280) on every channel.

Architecture overrides (for tests): ``EncoderConfig.extra["vision_config"]`` is passed
to ``SwinConfig``.
"""

from __future__ import annotations

from pathlib import Path

from radsearch.encoders.base import EncoderConfig
from radsearch.encoders.hubcache import import_optional, resolves
from radsearch.encoders.medsam import read_state_dict
from radsearch.encoders.registry import register_encoder, register_family
from radsearch.errors import EncoderError

WEIGHTS_NAME = "pytorch_model.bin"
SWIN_PREFIX = "vision_model.model."
PROJECTION_KEY = "vision_model.projection_head.weight"
MEAN, STD = 0.5862785803043838, 0.27950088968644304

register_encoder(
    EncoderConfig(
        name="medclip",
        family="medclip",
        model_id="MedCLIP-ViT (Swin-tiny + projection head)",
        dim=512,
        input_size=224,
        resize="pad",
        interpolation="bicubic",
        mean=(MEAN,) * 3,
        std=(STD,) * 3,
        pooling="medclip-image",
        description="MedCLIP ViT variant (Swin-tiny, MIMIC-CXR + CheXpert), projected image "
        "embedding (--weights PATH)",
        weights_hint="download the MedCLIP-ViT checkpoint named in medclip_vit_weight.txt "
        "(github.com/RyanWangZf/MedCLIP), unzip it and pass --weights DIR (or its "
        "pytorch_model.bin)",
    )
)


def _checkpoint_file(cfg: EncoderConfig, weights: str | None) -> Path:
    path = weights or cfg.location.get("weights_file")
    if not path:
        raise EncoderError(f"model {cfg.name!r} needs --weights PATH; {cfg.weights_hint}")
    p = Path(path)
    p = p / WEIGHTS_NAME if p.is_dir() else p
    if not p.is_file():
        raise EncoderError(f"model {cfg.name!r}: weights file not found: {p}")
    return p


def vision_tensors(state: dict, cfg: EncoderConfig, path: Path) -> tuple[dict, object]:
    """``(Swin state dict, projection weight)`` of a MedCLIP checkpoint."""
    swin = {k[len(SWIN_PREFIX) :]: v for k, v in state.items() if k.startswith(SWIN_PREFIX)}
    if not swin or PROJECTION_KEY not in state:
        raise EncoderError(
            f"model {cfg.name!r}: {path} is not a MedCLIP-ViT checkpoint (no {SWIN_PREFIX}* "
            f"or {PROJECTION_KEY} keys)"
        )
    return swin, state[PROJECTION_KEY]


def _swin(cfg: EncoderConfig, swin_state: dict, path: Path):
    transformers = import_optional("transformers", cfg.name)
    config = transformers.SwinConfig(**cfg.extra.get("vision_config", {}))
    try:
        model, info = transformers.SwinModel.from_pretrained(
            None, config=config, state_dict=swin_state, output_loading_info=True
        )
    except Exception as e:  # shapes of another architecture
        raise EncoderError(f"model {cfg.name!r}: {path} does not fit Swin-tiny ({e})") from None
    if info["missing_keys"] or info.get("mismatched_keys"):
        missing = sorted(info["missing_keys"] or info["mismatched_keys"])[:3]
        raise EncoderError(f"model {cfg.name!r}: {path} lacks Swin weights ({missing} ...)")
    return model


class MedClipImage:
    """Factory for the torch module: Swin pooler output -> projection head. Region
    features: the last stage's tokens after the final layer norm (what the pooler
    averages; 7x7x768 at 224 px), unprojected."""

    @staticmethod
    def build(swin, projection, name: str = "medclip"):
        import torch

        from radsearch.encoders.spatial import SpatialOutput, tokens_to_map

        class _Module(torch.nn.Module, SpatialOutput):
            def __init__(self):
                super().__init__()
                self.swin = swin
                self.model_name = name
                self.projection = torch.nn.Linear(*reversed(projection.shape), bias=False)
                with torch.no_grad():
                    self.projection.weight.copy_(projection)

            def forward(self, x):
                return self.projection(self.swin(pixel_values=x).pooler_output)

            def spatial_map(self, x):
                return tokens_to_map(self.swin(pixel_values=x).last_hidden_state, prefix=0)

        return _Module()


@register_family("medclip", available=lambda cfg: resolves(_checkpoint_file, cfg))
def load_medclip(cfg: EncoderConfig, weights: str | None):
    path = _checkpoint_file(cfg, weights)
    swin_state, projection = vision_tensors(read_state_dict(path, cfg), cfg, path)
    return MedClipImage.build(_swin(cfg, swin_state, path), projection, cfg.name)
