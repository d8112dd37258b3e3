"""Batched, resumable embedding extraction: ItemRefs -> L2-normalised float32 vectors.

Decoding, resizing and batch stacking run in worker processes (a torch DataLoader)
overlapping with inference in this process (``inference_mode``; threads fitted to the
idle cores; the ``auto`` runtime of ``radsearch.encoders.accel``: ONNX Runtime for the
offline CNNs when it is faithful and faster, channels-last torch otherwise); workers
exit when this process dies, even by kill -9. Results are flushed to ``work_dir`` in
shards written atomically (temp file + ``os.replace``) every ``shard_size`` items or
``CHECKPOINT_SECONDS``; a re-run skips ids already in a shard and ends with the same
vectors in the same order. Unreadable files are recorded in ``failures.jsonl`` with
their reason and the run goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radsearch.decode import collate_decoded, decode_item
from radsearch.encoders import Encoder
from radsearch.errors import RadsearchError
from radsearch.io.items import ItemRef

SHARD_GLOB = "shard-*.npz"
# Vectors are checkpointed at least this often, so small runs (fewer items than a
# shard) resume after a crash too.
CHECKPOINT_SECONDS = 10.0


@dataclass
class EmbedResult:
    """Vectors row-aligned with ``refs`` (the successfully read ones, in input order)."""

    refs: list[ItemRef]
    vectors: np.ndarray
    failures: list[dict] = field(default_factory=list)


class _Decode:
    """Picklable per-item job for worker processes: ``decode_item`` by position."""

    def __init__(self, refs: Sequence[ItemRef], preprocess):
        self.refs = refs
        self.preprocess = preprocess

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        return (i, *decode_item(self.refs[i], self.preprocess))


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
    """Decode processes: one core is left to inference (2 cores -> 1 worker)."""
    from radsearch.encoders.accel import cpu_threads

    return max(1, min(4, cpu_threads() - 1))


def prepare_work_dir(work_dir: str | Path, encoder: Encoder) -> Path:
    """Create ``work_dir`` stamped with the encoder; refuse one holding another's vectors."""
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
    return work_dir


class ShardWriter:
    """Buffers vectors and flushes them as atomic shards; appends failures as they come.

    Shared by the local and the Ray engine, so both leave the same files behind.
    """

    def __init__(self, work_dir: Path, shard_size: int = 2048):
        self.work_dir = work_dir
        self.shard_size = shard_size
        self.done, self.failed = _load_done(work_dir)
        self.n_shards = len(list(work_dir.glob(SHARD_GLOB)))
        self.ids: list[str] = []
        self.vecs: list[np.ndarray] = []
        self._ffh = None
        self._last_flush = time.monotonic()

    def pending(self, refs: Sequence[ItemRef]) -> list[ItemRef]:
        return [r for r in refs if r.id not in self.done and r.id not in self.failed]

    def fail(self, ref: ItemRef, reason: str) -> None:
        rec = {"id": ref.id, "source": ref.source, "reason": reason}
        self.failed[ref.id] = rec
        if self._ffh is None:
            self._ffh = open(self.work_dir / "failures.jsonl", "a")
        self._ffh.write(json.dumps(rec) + "\n")
        self._ffh.flush()

    def put(self, ids: list[str], vecs: np.ndarray) -> None:
        self.ids.extend(ids)
        self.vecs.append(np.asarray(vecs, np.float32))
        due = time.monotonic() - self._last_flush >= CHECKPOINT_SECONDS
        if len(self.ids) >= self.shard_size or due:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self.ids:
            return
        vecs = np.concatenate(self.vecs).astype(np.float32)
        _atomic_save_npz(
            self.work_dir / f"shard-{self.n_shards:05d}.npz", ids=np.asarray(self.ids), vectors=vecs
        )
        for i, v in zip(self.ids, vecs, strict=True):
            self.done[i] = v
        self.n_shards += 1
        self.ids.clear()
        self.vecs.clear()

    def close(self) -> None:
        self.flush()
        if self._ffh is not None:
            self._ffh.close()
            self._ffh = None

    def result(self, refs: Sequence[ItemRef], dim: int) -> EmbedResult:
        kept = [r for r in refs if r.id in self.done]
        vectors = (
            np.stack([self.done[r.id] for r in kept]).astype(np.float32)
            if kept
            else np.zeros((0, dim), np.float32)
        )
        failures = [self.failed[r.id] for r in refs if r.id in self.failed]
        return EmbedResult(kept, vectors, failures)


def start_run(refs, encoder: Encoder, work_dir, shard_size: int, progress: bool, desc: str):
    """What both engines do first: the stamped work dir, its writer, the pending refs
    and a progress bar starting at what is already done."""
    from tqdm import tqdm

    writer = ShardWriter(prepare_work_dir(work_dir, encoder), shard_size)
    pending = writer.pending(refs)
    bar = tqdm(
        total=len(refs),
        initial=len(refs) - len(pending),
        desc=desc,
        unit="img",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    return writer, pending, bar


class _Collate:
    """Runs in the decode worker: stacks a batch into one array, so the main process
    receives one contiguous buffer per batch (numpy, pickled through the pipe: no
    /dev/shm, which containers often keep small)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, batch):
        return collate_decoded(self.collate, batch)


class _DieWithParent:
    """DataLoader worker init: the worker exits when the parent process dies.

    A worker stuck in a long decode never reaches torch's own between-items check, so a
    kill -9 of the parent would leave it running. On Linux the kernel sends SIGKILL on
    the parent's death (``PR_SET_PDEATHSIG``); elsewhere, and for a parent that died
    before that was set, a daemon thread polls the parent PID.
    """

    def __init__(self, parent: int):
        self.parent = parent

    def __call__(self, _worker_id: int) -> None:
        import signal
        import threading

        if sys.platform.startswith("linux"):
            try:
                import ctypes

                ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PDEATHSIG
            except (OSError, AttributeError):
                pass
        threading.Thread(target=self._watch, daemon=True, name="parent-watch").start()

    def _watch(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(1.0)
        os._exit(1)


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
    runtime: str | None = None,
    regions=None,
) -> EmbedResult:
    """Embed ``refs`` with ``encoder``, resuming from shards already in ``work_dir``.

    ``runtime`` (``auto`` | ``torch`` | ``onnx``; default ``$RADSEARCH_RUNTIME`` or
    ``auto``) picks the inference runtime (see ``radsearch.encoders.accel``).
    ``regions``: a ``regions.extract.RegionSink`` that takes each batch's region codes
    from the same forward pass (index builds with region features).
    """
    import torch
    from torch.utils.data import DataLoader

    from radsearch.encoders.accel import accelerate, inference_threads
    from radsearch.encoders.quantize import ensure_int8

    writer, pending, bar = start_run(refs, encoder, work_dir, shard_size, progress, desc)
    workers = default_workers() if workers is None else workers
    try:
        if pending:
            ensure_int8(encoder, refs)  # int8 variants: calibrated on the first of refs
            if len(pending) >= 2 * batch_size:  # worth a runtime check
                (accelerate if regions is None else regions.accelerate)(encoder, runtime)
            torch.set_num_threads(inference_threads())
            preprocess, collate = encoder.preprocess_fn(), encoder.collate
            if regions is not None:
                preprocess, collate = regions.wrap(preprocess, collate)
            loader = DataLoader(
                _Decode(pending, preprocess),
                batch_size=batch_size,
                num_workers=workers,
                collate_fn=_Collate(collate),
                prefetch_factor=4 if workers else None,
                persistent_workers=False,
                worker_init_fn=_DieWithParent(os.getpid()),
            )
            for idx, x, errors in loader:
                for i, err in errors:
                    writer.fail(pending[i], err)
                if idx:
                    ids = [pending[i].id for i in idx]
                    vectors = (
                        encoder.encode(x) if regions is None else regions.encode(encoder, ids, x)
                    )
                    writer.put(ids, vectors)
                bar.update(len(idx) + len(errors))
    finally:
        writer.close()
        bar.close()
    return writer.result(refs, encoder.dim)
