"""Fusion encoders: several encoders searched as one vector.

``fusion:A+B`` (optionally ``fusion:A@0.7+B@0.3``) embeds each image with every
member encoder (each with its own preprocessing, input size and weights), L2-normalises
each member's block, multiplies it by its weight and concatenates; ``Encoder.encode``'s
contract (L2-normalised rows) holds for the whole. Cosine similarity of fused vectors
is then the weighted sum of the members' cosine similarities (divided by the sum of
squared weights). Names registered with :func:`register_fusion` work the same way.

The config (family ``fusion``) lists the members' full configs in ``extra``, so its
hash changes whenever a member's does, and an index built with a fusion refuses
vectors from any other combination.
"""

from __future__ import annotations

import numpy as np

from radsearch.encoders.base import Encoder, EncoderConfig
from radsearch.encoders.registry import (
    create_encoder,
    get_config,
    register_derived,
    register_family,
    register_prefix,
    weights_available,
)
from radsearch.errors import EncoderError

MEMBERS = "members"  # a fusion's region layer when its members' layers differ


def parse_members(spec: str) -> list[tuple[str, float]]:
    """``"A@0.7+B"`` -> ``[("A", 0.7), ("B", 1.0)]``."""
    out = []
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            continue
        name, sep, w = part.rpartition("@")
        if not sep:
            name, w = part, "1"
        try:
            weight = float(w)
        except ValueError:
            raise EncoderError(f"fusion member {part!r}: weight {w!r} is not a number") from None
        if weight <= 0:
            raise EncoderError(f"fusion member {part!r}: weight must be positive")
        out.append((name, weight))
    if len(out) < 2:
        raise EncoderError(f"fusion needs at least two encoders joined by '+', got {spec!r}")
    return out


def fusion_config(
    members: list[tuple[str | EncoderConfig, float]], name: str | None = None
) -> EncoderConfig:
    """The config of a fusion of ``(encoder name or config, weight)`` pairs."""
    cfgs = [m if isinstance(m, EncoderConfig) else get_config(m) for m, _ in members]
    for c in cfgs:
        if c.family == "fusion":
            raise EncoderError(
                f"fusion member {c.name!r} is itself a fusion; list its members instead"
            )
    weights = [float(w) for _, w in members]
    label = "+".join(
        f"{c.name}@{w:g}" if w != 1 else c.name for c, w in zip(cfgs, weights, strict=True)
    )
    return EncoderConfig(
        name=name or f"fusion:{label}",
        family="fusion",
        model_id=label,
        dim=sum(c.dim for c in cfgs),
        input_size=max(c.input_size for c in cfgs),
        pooling="concat",
        description="fusion of "
        + ", ".join(c.name for c in cfgs)
        + " (each block L2-normalised, weighted)",
        weights_hint="; ".join(sorted({c.weights_hint for c in cfgs if c.weights_hint})),
        extra={"members": [c.to_dict() for c in cfgs], "weights": weights},
    )


@register_prefix("fusion")
def _from_prefix(rest: str) -> EncoderConfig:
    return fusion_config(parse_members(rest))


def register_fusion(name: str, members: list[tuple[str, float]], description: str = "") -> None:
    """Register ``name`` as the fusion of ``members``, resolved when ``name`` is asked for
    (so members may be registered after it, in any module)."""

    def build() -> EncoderConfig:
        cfg = fusion_config(members, name=name)
        return cfg.replace(description=description or cfg.description)

    register_derived(name, build)


class _Preprocess:
    """Picklable: one image -> a tuple with each member's preprocessed array."""

    def __init__(self, fns):
        self.fns = list(fns)

    def __call__(self, rgb):
        return tuple(fn(rgb) for fn in self.fns)


class FusionEncoder(Encoder):
    """An ``Encoder`` whose items are tuples of the members' inputs."""

    def __init__(self, config: EncoderConfig, members: list[Encoder], weights: list[float]):
        import torch

        self.config = config
        self.members = members
        self.weights = [float(w) for w in weights]
        self.device = members[0].device
        self.module = torch.nn.ModuleList([m.module for m in members])

    def preprocess(self, rgb: np.ndarray):
        return tuple(m.preprocess(rgb) for m in self.members)

    def preprocess_fn(self):
        return _Preprocess([m.preprocess_fn() for m in self.members])

    def collate(self, arrays: list):
        return tuple(m.collate([a[i] for a in arrays]) for i, m in enumerate(self.members))

    def encode(self, batch) -> np.ndarray:
        blocks = [
            m.encode(b) * w for m, b, w in zip(self.members, batch, self.weights, strict=True)
        ]
        out = np.concatenate(blocks, axis=1)
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )

    @property
    def has_spatial(self) -> bool:
        return all(m.has_spatial for m in self.members)

    @property
    def region_layer(self) -> str | None:
        """The members' common region layer, or ``members`` (each member its own)."""
        layers = {m.region_layer for m in self.members}
        return layers.pop() if len(layers) == 1 else MEMBERS

    def region_geometry(self) -> dict:
        """The first member's: the fused grid is laid on its grid."""
        return self.members[0].region_geometry()

    def feature_grid(self, batch, layer: str | None = None) -> np.ndarray:
        """The members' grids (region features) on the first member's grid, each cell's
        block L2-normalised and weighted, like the pooled vectors. ``layer``: passed to
        every member, or ``members`` for each member's own region layer. Members that
        resize differently (squash vs crop) see non-square images differently; their
        cells are aligned as if they saw the same square input."""
        import torch

        lacking = [m.config.name for m in self.members if not m.has_spatial]
        if lacking:
            raise EncoderError(
                f"model {self.config.name!r}: member(s) {', '.join(lacking)} have no spatial "
                "output; region features need every member to have one"
            )
        grids = [
            m.feature_grid(b, m.region_layer if layer == MEMBERS else layer)
            for m, b in zip(self.members, batch, strict=True)
        ]
        h, w = grids[0].shape[1:3]
        out = []
        for g, wt in zip(grids, self.weights, strict=True):
            if g.shape[1:3] != (h, w):
                t = torch.from_numpy(np.ascontiguousarray(g.transpose(0, 3, 1, 2)))
                g = torch.nn.functional.adaptive_avg_pool2d(t, (h, w)).numpy().transpose(0, 2, 3, 1)
            out.append(g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12) * wt)
        return np.concatenate(out, axis=-1).astype(np.float32)


def build_fusion_encoder(cfg: EncoderConfig, module=None, device: str = "cpu") -> FusionEncoder:
    """The fusion family's ``Encoder``: each member built from its stored config."""
    members = [
        create_encoder(EncoderConfig.from_dict(d), device=device) for d in cfg.extra["members"]
    ]
    return FusionEncoder(cfg, members, cfg.extra["weights"])


def _members_available(cfg: EncoderConfig) -> bool:
    return all(weights_available(EncoderConfig.from_dict(d)) for d in cfg.extra.get("members", []))


@register_family("fusion", available=_members_available, encoder=build_fusion_encoder)
def load_fusion(cfg: EncoderConfig, weights: str | None):
    """Members load their own weights: nothing to load for the fusion itself."""
    if weights:
        raise EncoderError(
            f"model {cfg.name!r}: --weights is ambiguous for a fusion; members load their own"
        )
    return None


# Named fusions of the offline encoders.
register_fusion(
    "lite0+lite2",
    [("efficientnet-lite0", 1.0), ("efficientnet-lite2", 1.0)],
    "EfficientNet-Lite0 + Lite2 (offline), blocks L2-normalised, equal weights",
)
register_fusion(
    "lite2+litemedsam",
    [("efficientnet-lite2", 1.0), ("litemedsam", 1.0)],
    "EfficientNet-Lite2 + LiteMedSAM (offline), blocks L2-normalised, equal weights",
)
