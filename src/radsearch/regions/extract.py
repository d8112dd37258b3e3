"""Index-time region extraction: items -> region codes (through the one decode path).

Region codes normally ride on the embedding pass: ``RegionSink`` is handed to
``embed.embed_refs``, whose decode workers then also report each image's stored size,
and each batch goes through ``Encoder.encode_with_grid``, one forward pass giving the
vector and the region map (on ONNX Runtime when faithful, ``accel.accelerate_joint``).
Items whose vectors came from elsewhere (a resumed run's shards, the shared embedding
cache, the Ray engine) get a region-only pass (``RegionSink.extract``). Codes, not
raw grids, are kept, so memory stays at the store's size; the PCA is fitted on the
first ``FIT_ITEMS`` grids, whichever pass gave them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.io.items import ItemRef, load_pixels

FIT_ITEMS = 1024
# Below this many items the region pass stays eager (an ONNX export costs ~1-2 s).
ACCELERATE_ITEMS = 256


class SizedPreprocess:
    """Picklable: pixels -> (the encoder's preprocessed input, stored width/height)."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, rgb):
        return self.preprocess(rgb), (rgb.shape[1], rgb.shape[0])


class SizedCollate:
    """Picklable: ``SizedPreprocess`` outputs -> (the encoder's batch, sizes B x 2)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        return self.collate([x for x, _ in items]), np.asarray([s for _, s in items], np.int32)


class _DecodeWithSize:
    """Picklable per-item job of the region-only pass (all its items were read once)."""

    def __init__(self, refs: Sequence[ItemRef], encoder):
        self.refs, self.preprocess = refs, SizedPreprocess(encoder.preprocess_fn())

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        ref = self.refs[i]
        try:
            return self.preprocess(load_pixels(ref))
        except RadsearchError as exc:
            raise RadsearchError(f"{ref.source}: region features: {exc}") from None


def grid_batches(refs, encoder, layer: str, batch_size=32, workers=0, runtime=None):
    """Yield ``(grids B x H x W x C, sizes B x 2)`` for ``refs`` in order."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _DecodeWithSize(refs, encoder),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=SizedCollate(encoder.collate),
    )
    if len(refs) >= ACCELERATE_ITEMS:  # the export pays off over many items
        from radsearch.encoders.accel import accelerate_spatial

        accelerate_spatial(encoder, layer, runtime)
    for x, sizes in loader:
        yield encoder.feature_grid(x, layer), sizes


class RegionSink:
    """Region codes (and image sizes) of the items being indexed, by item id."""

    def __init__(self, store, runtime: str | None = None):
        self.store, self.layer, self.runtime = store, store.spec["layer"], runtime
        self.codes: dict[str, np.ndarray] = {}
        self.sizes: dict[str, np.ndarray] = {}
        self._pending: list[tuple[list[str], np.ndarray, np.ndarray]] = []
        self._pending_ids: set[str] = set()  # held back until the codec is fitted

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.codes or item_id in self._pending_ids

    def wrap(self, preprocess, collate):
        """The embedding pass's decode steps, made to carry each image's size."""
        return SizedPreprocess(preprocess), SizedCollate(collate)

    def accelerate(self, encoder, runtime: str | None = None) -> None:
        """The embedding pass's runtime check: one ONNX model for vector and map where
        faithful, else the two of ``accelerate`` and ``accelerate_spatial``."""
        from radsearch.encoders.accel import accelerate, accelerate_joint, accelerate_spatial

        if not accelerate_joint(encoder, self.layer, runtime):
            accelerate(encoder, runtime)
            accelerate_spatial(encoder, self.layer, runtime)

    def encode(self, encoder, ids: list[str], x) -> np.ndarray:
        """A ``wrap``ped batch -> its vectors; its region codes are kept here."""
        batch, sizes = x
        vectors, grids = encoder.encode_with_grid(batch, self.layer)
        self.add(ids, grids, sizes)
        return vectors

    def add(self, ids: list[str], grids: np.ndarray, sizes: np.ndarray) -> None:
        if self.store.codec is None:
            self._pending.append((list(ids), grids, sizes))
            self._pending_ids.update(ids)
            if len(self._pending_ids) >= FIT_ITEMS:
                self.finish()
            return
        for i, code, size in zip(ids, self.store.encode(grids), sizes, strict=True):
            self.codes[i], self.sizes[i] = code, size

    def finish(self) -> None:
        """Fit the codec on the grids held back for it (fewer than ``FIT_ITEMS`` items
        in all: on what there is) and encode them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._pending_ids = set()
        self.store.fit(np.concatenate([g for _, g, _ in pending]))
        for ids, grids, sizes in pending:
            self.add(ids, grids, sizes)

    def extract(self, refs, encoder, batch_size=32, workers=None, progress=False) -> None:
        """The region-only pass over ``refs`` not yet here."""
        from tqdm import tqdm

        from radsearch.embed import default_workers

        refs = [r for r in refs if r.id not in self]
        workers = default_workers() if workers is None else workers
        bar = tqdm(
            total=len(refs),
            desc="region features",
            unit="img",
            disable=not progress or not refs,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        done = 0
        with bar:
            batches = grid_batches(refs, encoder, self.layer, batch_size, workers, self.runtime)
            for grids, sizes in batches:
                self.add([r.id for r in refs[done : done + len(sizes)]], grids, sizes)
                done += len(sizes)
                bar.update(len(sizes))

    def aligned(self, refs) -> tuple[np.ndarray, np.ndarray]:
        """Codes and sizes row-aligned with ``refs`` (every one of them extracted)."""
        self.finish()
        return (
            np.stack([self.codes[r.id] for r in refs]),
            np.stack([self.sizes[r.id] for r in refs]).astype(np.int32),
        )


def extract_codes(
    store,
    refs,
    encoder,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes and sizes row-aligned with ``refs``; fits ``store``'s codec if it has none."""
    sink = RegionSink(store)
    sink.extract(refs, encoder, batch_size, workers, progress)
    return sink.aligned(refs)


def enable_regions(index, encoder, wanted: bool | None):
    """The store new items' region codes go to, or None (see ``pipeline.build_index``).

    An index that keeps region features always gets them for new items; a new index
    gets them when ``wanted`` (default: when the encoder has a spatial output)."""
    from radsearch.regions.features import store_of

    if index.manifest.get("regions"):
        return store_of(index)
    if index.count or wanted is False or (wanted is None and not encoder.has_spatial):
        return None
    if not encoder.has_spatial:
        encoder.feature_grid(None)  # raises the encoder's own "no spatial output" error
    index.manifest["regions"] = new_spec(encoder)
    return store_of(index)


def new_spec(encoder) -> dict:
    """The manifest entry of a new region store: the encoder's own region layer and grid
    geometry (a fusion's is its first member's)."""
    from radsearch.regions.features import region_spec

    return {**region_spec(encoder, layer=encoder.region_layer), **encoder.region_geometry()}


def region_sink(index, encoder, regions: bool | None, runtime=None) -> RegionSink | None:
    """The sink of a build's region codes (see ``pipeline.build_index``), or None."""
    store = enable_regions(index, encoder, regions)
    return None if store is None else RegionSink(store, runtime)


def codes_for_new_items(sink, encoder, refs, batch_size, workers, progress):
    """``(codes, sizes)`` for the items the embedding pass kept, or None (no regions):
    the region-only pass first for those the embedding pass did not see."""
    if sink is None or not refs:
        return None
    sink.extract(refs, encoder, batch_size, workers, progress)
    return sink.aligned(refs)
