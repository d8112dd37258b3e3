"""Index building end to end: source -> new items -> embeddings -> index directory.

The one place that strings the stages together, used by ``radsearch index``, the
Python API and the DICOMweb / Ray paths, so incremental and resumable behaviour is
the same everywhere: only items not yet in the index are embedded, embeddings are
checkpointed in ``DIR/.work/<encoder hash>/`` until the index commit succeeds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from radsearch.encoders import DEFAULT_ENCODER
from radsearch.errors import RadsearchError
from radsearch.index import Index
from radsearch.index.core import MANIFEST
from radsearch.io.items import ItemRef

FAILURES = "failures.jsonl"


@dataclass
class BuildReport:
    index: Index
    added: int
    skipped_existing: int
    failures: list[dict] = field(default_factory=list)
    recall_at_10: float | None = None


def open_or_create(out: str | Path, model: str | None, store: dict | None = None) -> Index:
    """Open ``out`` if it is an index (refusing another encoder), else create one."""
    out = Path(out)
    if (out / MANIFEST).exists() or (out / ".commit").exists():
        index = Index.open(out)
        index.check_model(model)
        return index
    if out.exists() and any(p for p in out.iterdir() if p.name not in (".work", ".next", FAILURES)):
        raise RadsearchError(f"{out}: exists and is not a radsearch index; choose an empty --out")
    return Index.create(out, model or DEFAULT_ENCODER, store=store)


def build_index(
    refs: Iterable[ItemRef],
    out: str | Path,
    *,
    model: str | None = None,
    weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    store: dict | None = None,
    engine: str = "local",
    engine_options: dict | None = None,
) -> BuildReport:
    """Add every item of ``refs`` not yet in the index at ``out`` (created if needed)."""
    index = open_or_create(out, model, store)
    refs = list(refs)
    new = index.new_refs(refs)
    skipped = len(refs) - len(new)
    if not new:
        return BuildReport(index, 0, skipped)
    encoder = index.encoder(device=device, weights=weights)
    work = index.path / ".work" / encoder.config.hash
    if engine == "local":
        from radsearch.embed import embed_refs

        result = embed_refs(
            new, encoder, work, batch_size=batch_size, workers=workers, progress=progress
        )
    elif engine == "ray":
        from radsearch.distributed import embed_refs_ray

        result = embed_refs_ray(
            new, encoder, work, batch_size=batch_size, progress=progress, **(engine_options or {})
        )
    else:
        raise RadsearchError(f"unknown engine {engine!r} (choose local or ray)")
    added = index.add(result.refs, result.vectors)
    if added:
        index.save()
    if result.failures:
        index.path.mkdir(parents=True, exist_ok=True)
        with open(index.path / FAILURES, "a") as fh:
            for rec in result.failures:
                fh.write(json.dumps(rec) + "\n")
    shutil.rmtree(index.path / ".work", ignore_errors=True)
    recall = (index.manifest.get("store") or {}).get("recall_at_10")
    return BuildReport(index, added, skipped, result.failures, recall)
