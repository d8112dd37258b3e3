"""Pooling of CNN feature maps into one vector (shared by the CNN families)."""

from __future__ import annotations

import torch


def pool_map(fmap: torch.Tensor, pooling: str) -> torch.Tensor:
    """``BxCxHxW`` -> ``BxC``. ``avg`` (the paper's choice), ``max``, or ``gem[p]``
    (generalised mean, p=3 unless given as e.g. ``gem4``; Radenovic et al. 2018)."""
    if pooling == "avg":
        return fmap.mean(dim=(2, 3))
    if pooling == "max":
        return fmap.amax(dim=(2, 3))
    if pooling.startswith("gem"):
        p = float(pooling[3:] or 3.0)
        return fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    raise ValueError(f"unknown pooling {pooling!r} for a feature map")
