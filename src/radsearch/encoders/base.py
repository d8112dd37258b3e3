"""Encoder config and the frozen-encoder wrapper every family shares.

Like timm's ``pretrained_cfg``, an ``EncoderConfig`` carries everything preprocessing
needs beside where the weights come from, so preprocessing never drifts from the
weights. What the encoder computes (architecture, preprocessing, pooling) is kept apart
from where its files lie (``location``); ``hash`` digests only the former and is stored
in every index manifest, so moving a checkpoint keeps its indexes valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from radsearch.errors import EncoderError

_INTERP = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to turn pixels into the vector this encoder was trained for.

    ``resize``: ``squash`` (to input_size x input_size, aspect ignored), ``shorter-crop``
    (shorter side to input_size, centre crop) or ``pad`` (longer side to input_size, pad
    with black). ``mean``/``std`` apply after scaling pixels to [0, 1]. ``pooling`` names
    how the feature map / tokens become one vector (see each family's loader).
    ``contrast``: ``none`` or ``equalize`` (histogram equalisation of the stored image
    before resizing, per channel): radiographs and ultrasound from different machines
    differ mostly in exposure and gain, which an ImageNet encoder otherwise encodes as
    strongly as the finding (docs/recipes.md measures the effect).
    ``location``: where the files lie (``local_dir``, ``weights_file``); not hashed. A
    config read from a location is named by it, so its name is not hashed either.
    """

    name: str
    family: str
    model_id: str
    dim: int
    input_size: int = 224
    resize: str = "squash"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pooling: str = "avg"
    contrast: str = "none"
    description: str = ""
    weights_hint: str = ""
    extra: dict = field(default_factory=dict)
    location: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        if "location" not in d:  # manifests that kept locations in ``extra``
            extra = dict(d.get("extra") or {})
            d["location"] = {k: extra.pop(k) for k in LOCATION_KEYS if k in extra}
            d["extra"] = extra
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})

    def identity(self) -> dict:
        """What determines the vectors: the config less descriptions, hints and location.

        ``contrast`` is left out when ``none`` and fusion members keep their full
        dicts (less location) so that every hash computed before stays the same. A
        fusion with a located member is named after its path, so its name is left out.
        """
        d = _without_location(self.to_dict())
        for k in ("description", "weights_hint"):
            d.pop(k)
        if d["contrast"] == "none":
            d.pop("contrast")
        members = d["extra"].get("members") if self.family == "fusion" else None
        if members:
            d["extra"] = {**d["extra"], "members": [_without_location(m) for m in members]}
            if any(m.get("location") for m in members):  # its name and label hold their paths
                d.pop("name", None)
                d.pop("model_id")
        return d

    @property
    def hash(self) -> str:
        """Short digest of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **changes) -> EncoderConfig:
        return dataclasses.replace(self, **changes)


LOCATION_KEYS = ("local_dir", "weights_file")


def _without_location(d: dict) -> dict:
    """A config dict less its location (and its name, when a location named it)."""
    d = dict(d)
    if d.pop("location", None):
        d.pop("name", None)
    return d


def preprocess(rgb: np.ndarray, cfg: EncoderConfig) -> np.ndarray:
    """``HxWx3 uint8`` -> ``3xSxS float32`` normalised as ``cfg`` says.

    A plain function of the config (not a method) so it pickles into worker processes.
    """
    size = cfg.input_size
    img = Image.fromarray(rgb)
    if cfg.contrast == "equalize":
        img = ImageOps.equalize(img)
    elif cfg.contrast != "none":
        raise ValueError(f"unknown contrast policy {cfg.contrast!r} in encoder {cfg.name}")
    interp = _INTERP[cfg.interpolation]
    if cfg.resize == "squash":
        img = img.resize((size, size), interp)
    elif cfg.resize == "shorter-crop":
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), interp)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif cfg.resize == "pad":
        w, h = img.size
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(img.resize((nw, nh), interp), ((size - nw) // 2, (size - nh) // 2))
        img = canvas
    else:
        raise ValueError(f"unknown resize policy {cfg.resize!r} in encoder {cfg.name}")
    x = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class Encoder:
    """A frozen feature extractor: ``config`` + a torch module mapping a batch to vectors.

    ``module(x)`` takes a ``Bx3xSxS`` float tensor and returns ``BxD`` pooled features;
    ``encode`` adds device placement, autocast on CUDA and L2 normalisation. Families
    whose models can do more (a text tower, several members) subclass it and say so in
    ``register_family(..., encoder=...)``.
    """

    supports_text = False

    def __init__(self, config: EncoderConfig, module, device: str = "cpu"):
        import torch

        self.config = config
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        for p in self.module.parameters():
            p.requires_grad_(False)
        # kept apart from ``module``: runtimes (encoders.accel) may swap ``module`` for
        # one that only returns pooled vectors
        self._spatial = getattr(self.module, "spatial", None)
        self._region_layer = getattr(self.module, "region_layer", None)

    @property
    def dim(self) -> int:
        return self.config.dim

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess(rgb, self.config)

    def preprocess_fn(self):
        """A picklable callable doing ``preprocess`` (sent to decode workers)."""
        import functools

        return functools.partial(preprocess, cfg=self.config)

    def collate(self, arrays: list) -> np.ndarray:
        """Preprocessed items -> one batch for ``encode`` (fusion encoders override)."""
        return np.stack(arrays)

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """``Bx3xSxS float32`` -> ``BxD`` L2-normalised float32."""
        import torch

        if self.config.extra.get("quantize") and getattr(self, "int8_model", None) is None:
            raise EncoderError(
                f"model {self.config.name!r} is not calibrated yet: its int8 model is made "
                "from an index's images (radsearch index --model "
                f"{self.config.name}); search an index built with it"
            )

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = self.module(x)
            else:
                out = self.module(x)
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays -> L2-normalised vectors (for queries; small batches)."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode(self.collate([self.preprocess(im) for im in images]))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised vectors in the image space (CLIP-family encoders only)."""
        raise EncoderError(
            f"model {self.config.name!r} has no text encoder; text queries need a CLIP-family "
            "model such as biomedclip or clip-vit-l14"
        )

    @property
    def has_spatial(self) -> bool:
        return getattr(self, "_spatial", None) is not None

    @property
    def region_layer(self) -> str | None:
        """The layer a new index's region store reads (the family's choice; None: the
        store's default)."""
        return getattr(self, "_region_layer", None)

    def region_geometry(self) -> dict:
        """How grid cells map back onto stored pixels: the input size and resize policy."""
        return {"input_size": self.config.input_size, "resize": self.config.resize}

    def encode_with_grid(self, batch, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(encode(batch), feature_grid(batch, layer))`` from one forward pass where the
        module has ``joint(x, layer)`` (an index build with region features then costs
        one pass, not two), on ONNX Runtime once ``accel.accelerate_joint`` put it
        there; otherwise (a quantised variant, CUDA, a family without it) the two calls."""
        import torch

        joint = self.__dict__.get("_joint_fast", {}).get(layer)
        owner = getattr(getattr(self, "_spatial", None), "__self__", None)
        if joint is None and self.device.type == "cpu" and not self.config.extra.get("quantize"):
            joint = getattr(owner, "joint", None)
        if joint is None:
            return self.encode(batch), self.feature_grid(batch, layer)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.inference_mode():
            vectors, grid = joint(x, layer)
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return vectors.numpy(), grid.permute(0, 2, 3, 1).float().numpy()

    def feature_grid(self, batch: np.ndarray, layer: str | None = None) -> np.ndarray:
        """``Bx3xSxS float32`` -> ``BxHxWxC float32``: the encoder's spatial feature map
        (region queries and why-similar maps, ``radsearch.regions``). Families whose
        module has ``spatial(x, layer)`` have one; the others say so."""
        import torch

        if not self.has_spatial:
            raise EncoderError(
                f"model {self.config.name!r} has no spatial output; region features need an "
                "encoder with feature maps or patch tokens (e.g. efficientnet-lite0)"
            )
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.inference_mode():
            spatial = self.__dict__.get("_spatial_fast", {}).get(layer, self._spatial)
            out = spatial(x, layer)
        return out.permute(0, 2, 3, 1).float().cpu().numpy()
