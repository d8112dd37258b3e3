"""Index building end to end: source -> new items -> embeddings -> index directory.

The one place that strings the stages together, used by ``radsearch index``, the
Python API and the DICOMweb / Ray paths, so incremental and resumable behaviour is
the same everywhere: only items not yet in the index are embedded, embeddings are
checkpointed in ``DIR/.work/<encoder hash>/`` until the index commit (which removes
them) succeeds. The whole build holds the index's write lock, so a second writer is
refused. ``DIR/failures.jsonl`` is the last run's report: one line per failed item,
one summary line for a file that failed for many items.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from radsearch.encoders import DEFAULT_ENCODER
from radsearch.errors import RadsearchError
from radsearch.index import Index
from radsearch.index.commit import LOCK, WORK, writing
from radsearch.index.core import MANIFEST
from radsearch.io.items import ItemRef

FAILURES = "failures.jsonl"
# A file failing for more items than this gets one summary line in the report.
SUMMARY_AFTER = 10


@dataclass
class BuildReport:
    index: Index
    added: int
    skipped_existing: int
    failures: list[dict] = field(default_factory=list)
    recall_at_10: float | None = None
    reused: int = 0  # vectors taken from the shared embedding cache (``reuse_cache``)


def open_or_create(out: str | Path, model: str | None, store: dict | None = None) -> Index:
    """Open ``out`` if it is an index (refusing another encoder), else create one."""
    out = Path(out)
    if (out / MANIFEST).exists() or (out / ".commit").exists():
        index = Index.open(out)
        index.check_model(model)
        return index
    refuse_foreign(out)
    return Index.create(out, model or DEFAULT_ENCODER, store=store)


def refuse_foreign(out: Path) -> None:
    """Refuse an ``--out`` folder that holds something other than an index."""
    if (out / MANIFEST).exists() or not out.is_dir():
        return
    ours = (WORK, ".next", ".commit", LOCK, FAILURES)
    if any(p for p in out.iterdir() if p.name not in ours):
        raise RadsearchError(f"{out}: exists and is not a radsearch index; choose an empty --out")


def failure_report(failures: list[dict]) -> list[dict]:
    """Failure records as written to the report: per item, or one line per file that
    failed for more than ``SUMMARY_AFTER`` items (``items``: how many, first and last id)."""
    by_source: dict[str, list[dict]] = {}
    for rec in failures:
        by_source.setdefault(rec["source"], []).append(rec)
    out = []
    for recs in by_source.values():
        if len(recs) <= SUMMARY_AFTER:
            out.extend(recs)
        else:
            first = recs[0]
            out.append({**first, "items": len(recs), "last_id": recs[-1]["id"]})
    return out


def write_failures(folder: Path, failures: list[dict]) -> None:
    """Replace ``folder/failures.jsonl`` with this run's report (removed when clean)."""
    path = folder / FAILURES
    if not failures:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(FAILURES + ".tmp")
    with open(tmp, "w") as fh:
        for rec in failure_report(failures):
            fh.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)


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
    regions: bool | None = None,
    reuse_cache: tuple | None = None,
    runtime: str | None = None,
) -> BuildReport:
    """Add every item of ``refs`` not yet in the index at ``out`` (created if needed).

    ``regions``: keep region features (``radsearch.regions``) in a new index; default:
    when the encoder has a spatial output. An index that has them keeps them.
    ``reuse_cache``: ``(cache folder or None for the default, root of the item ids)``:
    take the vectors ``evaluate``/``tune`` already cached for the same ids, root and
    encoder hash instead of encoding them (their region codes, if on, then come from a
    region-only pass; the others' from the embedding pass itself, see
    ``radsearch.regions.extract``). ``runtime``: the inference runtime (``auto`` |
    ``torch`` | ``onnx``; default ``$RADSEARCH_RUNTIME`` or ``auto``), for this build only."""
    refuse_foreign(Path(out))
    with writing(out):
        index = open_or_create(out, model, store)
        refs = list(refs)
        new = index.new_refs(refs)
        skipped = len(refs) - len(new)
        if not new:
            write_failures(index.path, [])
            return BuildReport(index, 0, skipped)
        encoder = index.encoder(device=device, weights=weights)
        from radsearch.encoders.quantize import ensure_int8

        ensure_int8(encoder, new)  # an int8 variant's first batch calibrates its model
        work = index.path / WORK / encoder.config.hash
        reused = 0
        if reuse_cache is not None:
            from radsearch.evaluate.embeddings import seed_from_cache

            reused = seed_from_cache(work, encoder.config, new, *reuse_cache)
        from radsearch.regions.extract import codes_for_new_items, region_sink

        sink = region_sink(index, encoder, regions, runtime)
        options = {**(engine_options or {}), "runtime": runtime}
        result = _embed(encoder, work, new, batch_size, workers, progress, engine, options, sink)
        codes = codes_for_new_items(sink, encoder, result.refs, batch_size, workers, progress)
        added = index.add(result.refs, result.vectors, regions=codes)
        if added:
            _attach_shipped_recipe(index, model)
            index.save(absorbs_work=True)
        write_failures(index.path, result.failures)
        shutil.rmtree(index.path / WORK, ignore_errors=True)
    recall = (index.manifest.get("store") or {}).get("recall_at_10")
    return BuildReport(index, added, skipped, result.failures, recall, reused)


def _attach_shipped_recipe(index, model: str | None) -> None:
    """A recommended name (``--model radsearch-default``) brings its recipe: attached
    once, to an index that has none, fitted on the index's own vectors."""
    from radsearch.encoders.recommended import shipped_recipe

    recipe = shipped_recipe(model)
    if recipe is not None and not index.manifest.get("recipe"):
        index.set_recipe(recipe)


def _embed(encoder, work, new, batch_size, workers, progress, engine, options, sink):
    if engine == "local":
        from radsearch.embed import embed_refs

        return embed_refs(
            new,
            encoder,
            work,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            regions=sink,
            runtime=options.get("runtime"),
        )
    if engine == "ray":
        from radsearch.distributed import embed_refs_ray

        return embed_refs_ray(
            new, encoder, work, batch_size=batch_size, progress=progress, **(options or {})
        )
    raise RadsearchError(f"unknown engine {engine!r} (choose local or ray)")
