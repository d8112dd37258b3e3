"""Batched, resumable embedding extraction: ItemRefs -> L2-normalised float32 vectors.

Decoding and preprocessing run in worker processes (a torch DataLoader) overlapping
with inference. Results are flushed to ``work_dir`` in shards written atomically
(temp file + ``os.replace``); a re-run skips ids already in a shard and ends with the
same vectors in the same order. Unreadable files are recorded in ``failures.jsonl``
with their reason and the run goes on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radsearch.encoders import Encoder
from radsearch.errors import RadsearchError
from radsearch.io.items import ItemRef, load_pixels

SHARD_GLOB = "shard-*.npz"


@dataclass
class EmbedResult:
    """Vectors row-aligned with ``refs`` (the successfully read ones, in input order)."""

    refs: list[ItemRef]
    vectors: np.ndarray
    failures: list[dict] = field(default_factory=list)


class _Decode:
    """Picklable per-item job for worker processes: load + preprocess, never raise."""

    def __init__(self, refs: Sequence[ItemRef], encoder: Encoder):
        self.refs = refs
        self.preprocess = encoder.preprocess_fn()

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        ref = self.refs[i]
        try:
            return i, self.preprocess(load_pixels(ref)), None
        except RadsearchError as exc:
            return i, None, str(getattr(exc, "reason", exc))
        except Exception as exc:  # a decoder bug must not kill a long run
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(batch):
    return batch


def _atomic_save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_done(work_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    done: dict[str, np.ndarray] = {}
    for shard in sorted(work_dir.glob(SHARD_GLOB)):
        with np.load(shard, allow_pickle=False) as z:
            for i, v in zip(z["ids"].tolist(), z["vectors"], strict=True):
                done[i] = v
    failed: dict[str, dict] = {}
    fpath = work_dir / "failures.jsonl"
    if fpath.exists():
        for line in fpath.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                failed[rec["id"]] = rec
    return done, failed


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def embed_refs(
    refs: Sequence[ItemRef],
    encoder: Encoder,
    work_dir: str | Path,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    shard_size: int = 2048,
    progress: bool = True,
    desc: str = "embedding",
) -> EmbedResult:
    """Embed ``refs`` with ``encoder``, resuming from shards already in ``work_dir``."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = work_dir / "encoder.json"
    if stamp.exists():
        prev = json.loads(stamp.read_text()).get("hash")
        if prev != encoder.config.hash:
            raise RadsearchError(
                f"{work_dir}: holds embeddings of another encoder (config {prev}); "
                f"refusing to mix them with {encoder.config.name} ({encoder.config.hash})"
            )
    else:
        stamp.write_text(json.dumps({"name": encoder.config.name, "hash": encoder.config.hash}))

    done, failed = _load_done(work_dir)
    pending = [r for r in refs if r.id not in done and r.id not in failed]
    workers = default_workers() if workers is None else workers
    n_shards = len(list(work_dir.glob(SHARD_GLOB)))

    bar = tqdm(
        total=len(refs),
        initial=len(refs) - len(pending),
        desc=desc,
        unit="img",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    buf_ids: list[str] = []
    buf_vecs: list[np.ndarray] = []

    def flush():
        nonlocal n_shards
        if not buf_ids:
            return
        vecs = np.concatenate(buf_vecs).astype(np.float32)
        _atomic_save_npz(
            work_dir / f"shard-{n_shards:05d}.npz", ids=np.asarray(buf_ids), vectors=vecs
        )
        for i, v in zip(buf_ids, vecs, strict=True):
            done[i] = v
        n_shards += 1
        buf_ids.clear()
        buf_vecs.clear()

    if pending:
        loader = DataLoader(
            _Decode(pending, encoder),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        with open(work_dir / "failures.jsonl", "a") as ffh:
            for batch in loader:
                ok = [(i, x) for i, x, err in batch if err is None]
                for i, _, err in batch:
                    if err is not None:
                        rec = {"id": pending[i].id, "source": pending[i].source, "reason": err}
                        failed[rec["id"]] = rec
                        ffh.write(json.dumps(rec) + "\n")
                        ffh.flush()
                if ok:
                    vecs = encoder.encode(encoder.collate([x for _, x in ok]))
                    buf_ids.extend(pending[i].id for i, _ in ok)
                    buf_vecs.append(vecs)
                bar.update(len(batch))
                if len(buf_ids) >= shard_size:
                    flush()
        flush()
    bar.close()

    kept = [r for r in refs if r.id in done]
    vectors = (
        np.stack([done[r.id] for r in kept]).astype(np.float32)
        if kept
        else np.zeros((0, encoder.dim), np.float32)
    )
    failures = [failed[r.id] for r in refs if r.id in failed]
    return EmbedResult(kept, vectors, failures)
