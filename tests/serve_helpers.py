"""Shared by the serve tests: a small real index of synthetic pattern images."""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import make_pattern

KINDS = ("stripes", "rings", "blob")


def pattern_index(root: Path, meta, size: int = 96) -> Path:
    """``root/index`` over 4 images of each of ``KINDS`` (efficientnet-lite0, real
    embeddings); ``meta(kind, n)`` gives each image's manifest columns."""
    from PIL import Image

    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    (root / "img").mkdir(parents=True)
    rows = []
    for kind in KINDS:
        for n in range(4):
            rel = f"img/{kind}-{n}.png"
            Image.fromarray(make_pattern(kind, size=size, seed=n)).save(root / rel)
            rows.append({"filepath": rel, **meta(kind, n)})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = root / "index"
    build_index(iter_source(root / "manifest.csv"), out, progress=False, workers=0)
    return out
