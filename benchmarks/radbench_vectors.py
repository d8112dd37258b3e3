"""RadBench rows and cached product vectors, aligned, for the selection benchmarks.

Vectors are ``.npz`` files with arrays ``emb`` and ``filepath`` (the CSV's filepath
column); a file named ``<encoder>-<16-hex config hash>.npz`` is the encoder's. Fusions
``A+B`` are built from the members as ``--model fusion:A+B`` computes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CSV = REPO.parent / "shared" / "radbench" / "radbench.csv"
CACHE = Path("/work/cache/lodo")
LITE0 = Path("/work/cache/tests/radbench-27a6dfb9fdd4-lite0-bdcf82b5b4477e4a.npz")


def load_table(csv: Path = CSV) -> dict[str, np.ndarray]:
    import csv as _csv

    with open(csv, newline="") as f:
        rows = list(_csv.DictReader(f))
    return {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}


def aligned(npz: Path, filepaths: np.ndarray) -> np.ndarray:
    with np.load(npz, allow_pickle=False) as z:
        pos = {p: i for i, p in enumerate(z["filepath"].tolist())}
        missing = [p for p in filepaths if p not in pos]
        if missing:
            raise SystemExit(f"{npz}: no vectors for {len(missing)} rows, e.g. {missing[0]}")
        return np.asarray(z["emb"], np.float32)[[pos[p] for p in filepaths]]


def load_vectors(table, cache: Path = CACHE, lite0: Path = LITE0, fusions=()) -> dict:
    """``{encoder name: N x D}`` in table order: plain Lite0, every finished file in
    ``cache``, then the requested fusions of those."""
    from radsearch.lodo import fuse

    fp = table["filepath"]
    out = {"efficientnet-lite0": aligned(lite0, fp)}
    for f in sorted(Path(cache).glob("*.npz")):
        m = re.fullmatch(r"(.+)-[0-9a-f]{16}", f.stem)
        if m and m.group(1) not in out:
            out[m.group(1)] = aligned(f, fp)
    for spec in fusions:
        members = spec.split("+")
        if all(m in out for m in members):
            out[f"fusion:{spec}"] = fuse([out[m] for m in members])
        else:
            print(f"skipping fusion {spec}: no vectors for {set(members) - set(out)}")
    return out
