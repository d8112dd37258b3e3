"""What an index's ``manifest.json`` must hold, and the stamps a commit writes into it.

Kept apart from ``radsearch.index.core`` so the reader's validation and the writer's
stamps (versions, time, durable files) live in one small place.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from radsearch.errors import IndexFormatError


def versions() -> dict:
    import faiss
    import pyarrow
    import torch

    from radsearch import __version__

    return {
        "radsearch": __version__,
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
    }


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def check_manifest(manifest, mpath: Path) -> None:
    """Refuse a manifest lacking what every reader relies on, naming the first gap."""
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{mpath}: damaged manifest (not a JSON object)")
    for key, kind in (("count", int), ("dim", int), ("encoder", dict), ("store", dict)):
        if not isinstance(manifest.get(key), kind):
            raise IndexFormatError(f"{mpath}: damaged manifest (no valid {key!r})")
    encoder = manifest["encoder"]
    if not all(isinstance(encoder.get(k), t) for k, t in (("name", str), ("config", dict))):
        raise IndexFormatError(f"{mpath}: damaged manifest (no valid encoder name/config)")
