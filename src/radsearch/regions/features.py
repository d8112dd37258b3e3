"""The region store: a compact grid of local features per indexed item.

At index time the encoder's spatial output (``Encoder.feature_grid``: by default the
14x14 block-10 map of EfficientNet-Lite0) is reduced with a PCA fitted on the index's
own cells and stored as int8 codes per channel (default ``sq8``, 14x14x64 = 12.25 KiB
per item) or fp16; for large archives e.g. the 7x7 head map x 48 int8 = 2.3 KiB. Files in the index directory:
``regions.npy`` (N x H x W x D codes, memory-mapped on open), ``regions_sizes.npy``
(N x 2 stored image width/height, to map cells back to pixels) and
``regions_state.npz`` (PCA mean/components, int8 scales). The grid geometry is in
``manifest["regions"]``. The index's ``save`` writes them into its commit stage, so
they are crash-safe and row-aligned with the vectors exactly like ``embeddings.npy``.
The PCA is fitted once, when the first items are added; later additions reuse it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radsearch.errors import IndexFormatError, RadsearchError

CODES = "regions.npy"
SIZES = "regions_sizes.npy"
STATE = "regions_state.npz"
# chosen on RadBench val (docs/regions.md): Lite0 block 10 (14x14 at 224 px), PCA 64, int8
# contrast: cells minus their image's mean cell (docs/regions.md, "contrastive cells")
DEFAULT = {
    "layer": "b10",
    "dim": 64,
    "codec": "sq8",
    "windows": [1, 2, 3, 4, 6],
    "fit_roi": True,
    "contrast": True,
}
CODECS = ("fp16", "sq8")
FIT_CELLS = 16_000  # cells sampled to fit the PCA (X^T X of C x C stays cheap)


def region_spec(
    encoder, layer: str | None = None, dim: int | None = None, codec: str | None = None
) -> dict:
    """The manifest entry for a new region store of ``encoder`` (before fitting)."""
    codec = codec or DEFAULT["codec"]
    if codec not in CODECS:
        raise RadsearchError(f"region codec {codec!r}: choose one of {', '.join(CODECS)}")
    cfg = encoder.config
    return {
        "layer": layer or DEFAULT["layer"],
        "dim": int(dim or DEFAULT["dim"]),
        "codec": codec,
        "input_size": cfg.input_size,
        "resize": cfg.resize,
        "grid": None,  # set from the first grids
        "channels": None,
        "windows": list(DEFAULT["windows"]),
        "fit_roi": DEFAULT["fit_roi"],
        "contrast": DEFAULT["contrast"],
    }


class Codec:
    """PCA to ``dim`` channels (centred), then fp16 or per-channel int8."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, lo=None, scale=None, codec="fp16"):
        self.mean, self.components = mean.astype(np.float32), components.astype(np.float32)
        self.lo, self.scale, self.codec = lo, scale, codec

    @classmethod
    def fit(cls, cells: np.ndarray, dim: int, codec: str, seed: int = 0) -> Codec:
        cells = np.asarray(cells, np.float32)
        if len(cells) > FIT_CELLS:
            cells = cells[np.random.default_rng(seed).choice(len(cells), FIT_CELLS, replace=False)]
        mean = cells.mean(axis=0)
        x = cells - mean
        dim = min(dim, x.shape[1], max(1, len(x) - 1))
        _, vecs = np.linalg.eigh(x.T @ x)
        comps = vecs[:, ::-1][:, :dim].T.copy()
        out = cls(mean, comps, codec=codec)
        if codec == "sq8":
            z = x @ comps.T
            lo, hi = np.percentile(z, 0.1, axis=0), np.percentile(z, 99.9, axis=0)
            out.lo, out.scale = (
                lo.astype(np.float32),
                np.maximum((hi - lo) / 255.0, 1e-8).astype(np.float32),
            )
        return out

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    def encode(self, grids: np.ndarray) -> np.ndarray:
        z = (np.asarray(grids, np.float32) - self.mean) @ self.components.T
        if self.codec == "sq8":
            return np.clip(np.round((z - self.lo) / self.scale), 0, 255).astype(np.uint8)
        return z.astype(np.float16)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.codec == "sq8":
            return codes.astype(np.float32) * self.scale + self.lo
        return np.asarray(codes, np.float32)

    def state(self) -> dict:
        d = {"mean": self.mean, "components": self.components}
        if self.codec == "sq8":
            d.update(lo=self.lo, scale=self.scale)
        return d


class RegionStore:
    """Codes row-aligned with the index; see module docstring."""

    def __init__(self, spec: dict, codec: Codec | None, codes: np.ndarray, sizes: np.ndarray):
        self.spec, self.codec, self.codes, self.sizes = spec, codec, codes, sizes
        self._cache: dict = {}

    @classmethod
    def empty(cls, spec: dict) -> RegionStore:
        return cls(spec, None, np.zeros((0, 0, 0, 0), np.float16), np.zeros((0, 2), np.int32))

    @classmethod
    def load(cls, path: Path, spec: dict, count: int) -> RegionStore:
        try:
            codes = np.load(path / CODES, mmap_mode="r")
            sizes = np.load(path / SIZES)
            with np.load(path / STATE, allow_pickle=False) as z:
                st = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{path}: damaged region features ({exc})") from None
        if len(codes) != count or len(sizes) != count:
            raise IndexFormatError(
                f"{path}: region features hold {len(codes)} items, expected {count}"
            )
        codec = Codec(st["mean"], st["components"], st.get("lo"), st.get("scale"), spec["codec"])
        return cls(spec, codec, codes, sizes)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.spec["grid"])

    def __len__(self) -> int:
        return len(self.sizes)

    def fit(self, grids: np.ndarray) -> None:
        """Fit the PCA/codec on raw grids (``B x H x W x C``); fixes the grid geometry."""
        grids = np.asarray(grids, np.float32)
        self.spec.update(grid=list(grids.shape[1:3]), channels=int(grids.shape[3]))
        self.codec = Codec.fit(
            grids.reshape(-1, grids.shape[3]), self.spec["dim"], self.spec["codec"]
        )
        self.spec["dim"] = self.codec.dim

    def encode(self, grids: np.ndarray) -> np.ndarray:
        """Raw grids -> codes (fitting the codec on them if this store has none yet)."""
        if self.codec is None:
            self.fit(grids)
        if list(grids.shape[1:]) != [*self.spec["grid"], self.spec["channels"]]:
            raise IndexFormatError(
                f"region grids of shape {tuple(grids.shape[1:])} do not match the index's"
            )
        return self.codec.encode(grids)

    def append_codes(self, codes: np.ndarray, sizes: np.ndarray) -> None:
        """Append codes and their images' ``(width, height)`` (row-aligned with the index)."""
        old = np.asarray(self.codes)
        self.codes = codes if len(old) == 0 else np.concatenate([old, codes])
        self.sizes = np.concatenate([self.sizes, np.asarray(sizes, np.int32).reshape(-1, 2)])
        self._cache.clear()

    def take(self, rows: np.ndarray) -> None:
        self.codes = np.asarray(self.codes)[rows]
        self.sizes = self.sizes[rows]
        self._cache.clear()

    def save(self, stage: Path) -> None:
        if self.codec is None:
            raise IndexFormatError("region store is empty; nothing to save")
        np.save(stage / CODES, np.asarray(self.codes))
        np.save(stage / SIZES, self.sizes)
        np.savez(stage / STATE, **self.codec.state())

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``N x H x W x D`` -> float32 ``N x H*W x D`` cells in the scoring space.

        With ``spec["contrast"]`` each image's mean cell is subtracted, so what is
        generic to the image (tissue, exposure) drops out and what is distinctive in
        it (a finding) dominates the cosines; query grids get the same (``project``)."""
        c = self.codec.decode(np.asarray(codes))
        c = c.reshape(len(c), -1, c.shape[-1])
        if self.spec.get("contrast", DEFAULT["contrast"]):  # query-time: old indexes too
            c -= c.mean(axis=1, keepdims=True)
        return c

    def cells(self, rows=None) -> np.ndarray:
        """Decoded ``N x H*W x D`` cells (``_decode``; all rows cached; see query.py)."""
        if rows is not None:
            return self._decode(self.codes[rows])
        if "cells" not in self._cache:
            self._cache["cells"] = np.ascontiguousarray(self._decode(self.codes))
        return self._cache["cells"]

    def project(self, grid: np.ndarray) -> np.ndarray:
        """A raw query grid (``H x W x C``) -> the scoring space (float32 ``H x W x D``)."""
        return self._decode(self.codec.encode(grid[None]))[0].reshape(*grid.shape[:2], -1)

    def nbytes_per_item(self) -> int:
        return int(np.prod(self.codes.shape[1:]) * np.dtype(self.codes.dtype).itemsize + 8)


# -- the index's hooks (index/core.py calls these; a no-op without region features) --
def store_of(index) -> RegionStore | None:
    """The index's region store (loaded once, memory-mapped), or None without one."""
    spec = index.manifest.get("regions")
    if not spec:
        return None
    store = index.__dict__.get("_region_store")
    if store is None:
        has_files = (index.path / CODES).exists()
        store = (
            RegionStore.load(index.path, spec, index.count)
            if has_files
            else RegionStore.empty(spec)
        )
        index.__dict__["_region_store"] = store
    return store


def require(index) -> RegionStore:
    """The region store, or a one-line error naming the index."""
    store = store_of(index)
    if store is None or store.codec is None or len(store) == 0:
        raise IndexFormatError(
            f"{index.path}: index has no region features (rebuild it with region features on: "
            "radsearch index ... without --no-regions, with an encoder that has a spatial output)"
        )
    return store


def on_add(index, keep: list[int], regions) -> None:
    """Keep the region codes of the rows ``index.add`` kept (``regions``: codes, sizes)."""
    store = store_of(index)
    if store is None:
        return
    if regions is None:
        raise IndexFormatError(f"{index.path}: index keeps region features; add() needs them too")
    codes, sizes = regions
    if len(codes) != len(sizes):
        raise IndexFormatError(f"{index.path}: {len(codes)} region codes for {len(sizes)} sizes")
    store.append_codes(np.asarray(codes)[keep], np.asarray(sizes)[keep])


def on_remove(index, keep: np.ndarray) -> None:
    store = store_of(index)
    if store is not None and len(store):
        store.take(keep)


def on_save(index, stage: Path) -> None:
    store = store_of(index)
    if store is not None and store.codec is not None:
        if len(store) != index.items.num_rows:
            raise IndexFormatError(f"{index.path}: region features out of step with the items")
        store.save(stage)
