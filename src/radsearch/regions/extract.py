"""Index-time region extraction: items -> region codes (through the one decode path).

A second pass of the encoder up to the region layer, over the items the embedding
pass just kept (decoding with ``io.items.load_pixels`` and the encoder's own
preprocessing, in worker processes as ``embed`` does). Codes, not raw grids, are
kept, so memory stays at the store's size; the PCA is fitted on the first chunk.
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


class _DecodeWithSize:
    """Picklable per-item job: pixels -> (preprocessed input, stored width/height)."""

    def __init__(self, refs: Sequence[ItemRef], encoder):
        self.refs, self.preprocess = refs, encoder.preprocess_fn()

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        ref = self.refs[i]
        try:
            rgb = load_pixels(ref)
        except RadsearchError as exc:
            raise RadsearchError(f"{ref.source}: region features: {exc}") from None
        return self.preprocess(rgb), (rgb.shape[1], rgb.shape[0])


class _Collate:
    def __init__(self, encoder):
        self.collate = encoder.collate

    def __call__(self, batch):
        return self.collate([x for x, _ in batch]), np.asarray([s for _, s in batch], np.int32)


def grid_batches(refs, encoder, layer: str, batch_size: int = 32, workers: int = 0):
    """Yield ``(grids B x H x W x C, sizes B x 2)`` for ``refs`` in order."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _DecodeWithSize(refs, encoder),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_Collate(encoder),
    )
    if len(refs) >= ACCELERATE_ITEMS:  # the export pays off over many items
        from radsearch.encoders.accel import accelerate_spatial

        accelerate_spatial(encoder, layer)
    for x, sizes in loader:
        yield encoder.feature_grid(x, layer), sizes


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
    from tqdm import tqdm

    from radsearch.embed import default_workers

    workers = default_workers() if workers is None else workers
    layer = store.spec["layer"]
    codes, sizes, pending = [], [], []
    bar = tqdm(
        total=len(refs),
        desc="region features",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for grids, sz in grid_batches(refs, encoder, layer, batch_size, workers):
            bar.update(len(sz))
            if store.codec is None:
                pending.append((grids, sz))
                if sum(len(s) for _, s in pending) < FIT_ITEMS:
                    continue
                grids, sz = _fit_on(store, pending)
                pending = []
            codes.append(store.encode(grids))
            sizes.append(sz)
        if pending:
            grids, sz = _fit_on(store, pending)
            codes.append(store.encode(grids))
            sizes.append(sz)
    finally:
        bar.close()
    return np.concatenate(codes), np.concatenate(sizes)


def _fit_on(store, pending):
    grids = np.concatenate([g for g, _ in pending])
    store.fit(grids)
    return grids, np.concatenate([s for _, s in pending])


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


def codes_for_new_items(index, refs, regions, batch_size, workers, progress):
    """``(codes, sizes)`` for the items the embedding pass kept, or None (no regions)."""
    store = enable_regions(index, index.encoder(), regions)
    if store is None or not refs:
        return None
    return extract_codes(
        store, refs, index.encoder(), batch_size=batch_size, workers=workers, progress=progress
    )
