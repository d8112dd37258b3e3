"""Region features of the hub families: each model's own last spatial output.

Every family's torch module exposes ``spatial(x, layer) -> BxCxHxW`` (what
``Encoder.feature_grid`` runs) and ``region_layer`` (the layer a new index stores). Here
the hub families take it from the same forward pass that gives their vector, never a
second model:

- ViT-style models (transformers ViT / DINOv2 / RAD-DINO / ViT-MAE, open_clip and timm
  ViTs, BiomedCLIP's timm trunk): the patch tokens of the last hidden state, after the
  final norm (the tokens the pooled vector is read from), CLS / register / distillation
  tokens dropped, laid out on the patch grid;
- CNNs (transformers ResNet, timm CNNs): the last feature map (before global pooling);
- SAM / MedSAM / LiteMedSAM: the 256-channel image embedding the mask decoder reads;
- MedCLIP's Swin: the last stage's tokens after the final norm (7x7 at 224 px).

Maps larger than ``MAX_GRID`` cells a side (DINOv2-B/14 at 224 px: 16x16, RAD-DINO at
518 px: 37x37, SAM: 64x64) are average-pooled to ``MAX_GRID`` x ``MAX_GRID``, the grid of
the default EfficientNet-Lite0 store, so every family fits the same 12.3 KiB per item
at the default PCA 64 int8 store.
"""

from __future__ import annotations

import math

from radsearch.errors import EncoderError

LAST = "last"
MAX_GRID = 14


def check_layer(name: str, layer: str | None) -> None:
    """Hub families have one region layer, ``last``; anything else is a one-line error."""
    if layer not in (None, LAST):
        raise EncoderError(
            f"model {name!r}: no layer {layer!r} for region features (this model has "
            f"{LAST!r}: its last spatial output)"
        )


def fit_grid(fmap):
    """``BxCxHxW`` -> at most ``MAX_GRID`` cells a side (average-pooled), float."""
    import torch

    h, w = fmap.shape[-2:]
    if h > MAX_GRID or w > MAX_GRID:
        fmap = torch.nn.functional.adaptive_avg_pool2d(
            fmap.float(), (min(h, MAX_GRID), min(w, MAX_GRID))
        )
    return fmap.float()


def tokens_to_map(tokens, side: int | None = None, prefix: int | None = None):
    """``BxNxC`` tokens (prefix tokens first, then patches row by row) -> ``BxCxHxW``.

    ``side``: patches per side of the (square) input; or ``prefix``: how many leading
    non-patch tokens (CLS, registers) to drop. One of them is needed.
    """
    n = tokens.shape[1]
    if side is None:
        side = math.isqrt(n - int(prefix or 0))
    if side < 1 or side * side > n or (prefix is not None and n - side * side != prefix):
        raise EncoderError(f"{n} tokens do not form a square patch grid")
    patches = tokens[:, n - side * side :]
    return patches.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


class SpatialOutput:
    """Mixin for a family's torch module: ``spatial(x, layer)`` from ``spatial_map(x)``
    (``BxCxHxW`` of the model's own forward pass), pooled to the store's grid.
    ``model_name`` names the model in errors."""

    region_layer = LAST
    model_name = "model"

    def spatial(self, x, layer=None):
        check_layer(self.model_name, layer)
        return fit_grid(self.spatial_map(x))

    def spatial_map(self, x):
        raise NotImplementedError


def tower(model, name: str, forward, spatial_map):
    """A torch module holding ``model`` whose vectors are ``forward(model, x)`` and region
    features ``spatial_map(model, x)``: one wrapper for families that need nothing else."""
    import torch

    class _Tower(torch.nn.Module, SpatialOutput):
        def __init__(self):
            super().__init__()
            self.model = model
            self.model_name = name

        def forward(self, x):
            return forward(self.model, x)

        def spatial_map(self, x):
            return spatial_map(self.model, x)

    return _Tower()
