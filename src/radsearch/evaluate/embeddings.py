"""Embeddings for an evaluation: from a file (.npy / .npz / .h5) or from the pipeline.

``--model`` embeds with ``radsearch.embed.embed_refs`` into a cache directory
(``<cache>/<encoder>-<config hash>/<root digest>/``, resumable shards), so a second run
with the same model and images re-encodes nothing. ``tune`` reads the same cache, and
``radsearch index`` takes from it (:func:`seed_from_cache`) the vectors of the same
item ids under the same root and encoder hash whose files did not change since. Every path ends in
``check_vectors``: NaN / infinite / all-zero rows are an error, never a silent number.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from radsearch.errors import RadsearchError

DEFAULT_CACHE = (
    Path(os.environ.get("RADSEARCH_CACHE", Path.home() / ".cache" / "radsearch")) / "evaluate"
)


def file_digest(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def check_vectors(vectors: np.ndarray, ids: list[str], what: str) -> np.ndarray:
    """float32, finite, non-zero, L2-normalised copy of ``vectors`` (or an error)."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[1] == 0:
        raise RadsearchError(f"{what}: expected a 2-D array of vectors, got shape {v.shape}")
    v = v.astype(np.float32)
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RadsearchError(
            f"{what}: {int(bad.sum())} vector(s) contain NaN or inf (first: {ids[i]!r})"
        )
    norms = np.linalg.norm(v, axis=1)
    zero = norms == 0
    if zero.any():
        i = int(np.flatnonzero(zero)[0])
        raise RadsearchError(f"{what}: {int(zero.sum())} all-zero vector(s) (first: {ids[i]!r})")
    return v / norms[:, None]


def load_embeddings(path: str | Path, ids: list[str]) -> np.ndarray:
    """Vectors row-aligned with ``ids`` (the CSV's filepath values) from ``path``.

    ``.npy``: one row per CSV row, in CSV order. ``.npz``: arrays ``emb`` and
    ``filepath`` (any order, extra rows ignored). ``.h5``: one dataset per filepath
    (the reference paper's layout)."""
    path = Path(path)
    if not path.exists():
        raise RadsearchError(f"{path}: no such embeddings file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        emb = np.load(path, mmap_mode="r")
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise RadsearchError(
                f"{path}: {emb.shape[0] if emb.ndim else 0} embedding rows do not match the "
                f"CSV's {len(ids)} rows (a .npy must be row-aligned with the CSV)"
            )
        return check_vectors(emb, ids, str(path))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = [a for a in ("emb", "filepath") if a not in z.files]
            if missing:
                raise RadsearchError(
                    f"{path}: needs arrays 'emb' and 'filepath' (has: {', '.join(z.files)})"
                )
            try:
                emb, paths = z["emb"], [str(p) for p in z["filepath"].tolist()]
            except ValueError:  # an object array: reading it would mean unpickling
                raise RadsearchError(
                    f"{path}: 'filepath' is an object array, which is never unpickled; "
                    "save it as strings: np.savez(..., filepath=np.asarray(paths, dtype=str))"
                ) from None
        if emb.ndim != 2 or emb.shape[0] != len(paths):
            raise RadsearchError(
                f"{path}: 'emb' has shape {emb.shape} but 'filepath' has {len(paths)} entries"
            )
        row = {p: i for i, p in enumerate(paths)}
        _require_all(path, ids, row)
        return check_vectors(emb[[row[i] for i in ids]], ids, str(path))
    if suffix in (".h5", ".hdf5"):
        try:
            import h5py
        except ImportError:
            raise RadsearchError(
                "reading .h5 embeddings needs h5py: pip install 'radsearch[eval]'"
            ) from None
        with h5py.File(path, "r") as f:
            have = {i: True for i in ids if i in f}
            _require_all(path, ids, have)
            emb = np.stack([np.asarray(f[i][()]).reshape(-1) for i in ids])
        return check_vectors(emb, ids, str(path))
    raise RadsearchError(f"{path}: unknown embeddings format (use .npy, .npz or .h5)")


def _require_all(path, ids, have) -> None:
    lost = [i for i in ids if i not in have]
    if lost:
        raise RadsearchError(
            f"{path}: no embedding for {len(lost)} of {len(ids)} CSV row(s) (first: {lost[0]!r})"
        )


def cache_dir_for(base: str | Path, config, root: str | Path) -> Path:
    """Where ``--model`` embeddings of images under ``root`` live (see module docstring)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in config.name)
    root_tag = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(base) / f"{name}-{config.hash}" / root_tag


def seed_cache(work_dir: str | Path, config, ids: list[str], vectors: np.ndarray) -> Path:
    """Put already-computed vectors of ``config``'s encoder into an embedding cache in
    ``embed_refs``'s shard format, so ``--model`` runs reuse them."""
    import json

    from radsearch.embed import _atomic_save_npz

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = work_dir / "encoder.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("hash") != config.hash:
        raise RadsearchError(f"{work_dir}: holds embeddings of another encoder")
    stamp.write_text(json.dumps({"name": config.name, "hash": config.hash}))
    n = len(list(work_dir.glob("shard-*.npz")))
    _atomic_save_npz(
        work_dir / f"shard-{n:05d}.npz",
        ids=np.asarray(ids),
        vectors=np.asarray(vectors, np.float32),
    )
    return work_dir


def cached_vectors(work: Path, config, refs) -> dict[str, np.ndarray]:
    """``{id: vector}`` of the ``refs`` a cache folder already holds under ``config``'s
    encoder hash, leaving out any whose file changed after the shard holding it was
    written (the cache is keyed by path, so an edited file must be encoded again).

    Unreadable shards are skipped: the cache only ever saves work, never decides it."""
    import json
    import zipfile

    from radsearch.embed import SHARD_GLOB

    stamp = work / "encoder.json"
    try:
        if json.loads(stamp.read_text()).get("hash") != config.hash:
            return {}
    except (OSError, ValueError):
        return {}
    want = {r.id: r for r in refs}
    out: dict[str, np.ndarray] = {}
    for shard in sorted(work.glob(SHARD_GLOB)):
        try:
            written = shard.stat().st_mtime
            with np.load(shard, allow_pickle=False) as z:
                ids = z["ids"].tolist()
                hit = [j for j, i in enumerate(ids) if i in want]
                vecs = z["vectors"] if hit else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue
        for j in hit:
            if _unchanged_since(want[ids[j]].source, written):
                out[ids[j]] = np.asarray(vecs[j], np.float32)
    return out


def _unchanged_since(source: str, written: float) -> bool:
    try:
        return os.stat(source).st_mtime <= written
    except (OSError, ValueError):
        return False


def seed_from_cache(work_dir: str | Path, config, refs, cache_dir, root) -> int:
    """Put the vectors the shared cache (``evaluate``/``tune``'s, at ``cache_dir`` for
    images under ``root``) holds for ``refs`` into an embedding run's resumable
    ``work_dir``, so the run encodes only the rest; returns how many were reused."""
    found = cached_vectors(cache_dir_for(cache_dir or DEFAULT_CACHE, config, root), config, refs)
    if not found:
        return 0
    ids = [r.id for r in refs if r.id in found]
    seed_cache(work_dir, config, ids, np.stack([found[i] for i in ids]))
    return len(ids)


def compute_embeddings(
    refs,
    model: str,
    cache_dir: str | Path | None,
    root: str | Path,
    *,
    device: str = "cpu",
    weights: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    calibration_refs=None,
):
    """Embed ``refs`` with ``model`` through the cache; returns (config, kept refs,
    vectors, failures, cache folder). ``calibration_refs``: the images an int8 variant
    is calibrated on (``radsearch.encoders.quantize``; the index split, so query images
    never shape the model), default ``refs``."""
    from radsearch.embed import embed_refs
    from radsearch.encoders import create_encoder, get_config

    config = get_config(model)
    work = cache_dir_for(cache_dir or DEFAULT_CACHE, config, root)
    cached = _fully_cached(work, config, refs)
    if cached is not None:  # nothing to encode: do not even load the model
        kept, vectors, failures = cached
        return (
            config,
            kept,
            check_vectors(vectors, [r.id for r in kept], f"{model} embeddings"),
            failures,
            work,
        )
    encoder = create_encoder(model, weights=weights, device=device)
    from radsearch.encoders.quantize import ensure_int8

    ensure_int8(encoder, calibration_refs or refs)
    result = embed_refs(
        refs,
        encoder,
        work,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        desc=f"embedding ({config.name})",
    )
    vectors = check_vectors(result.vectors, [r.id for r in result.refs], f"{model} embeddings")
    return encoder.config, result.refs, vectors, result.failures, work


def _fully_cached(work: Path, config, refs):
    """(kept refs, vectors, failures) if every ref is already in the cache, else None."""
    import json

    from radsearch.embed import _load_done

    stamp = work / "encoder.json"
    if not stamp.exists() or json.loads(stamp.read_text()).get("hash") != config.hash:
        return None
    done, failed = _load_done(work)
    if any(r.id not in done and r.id not in failed for r in refs):
        return None
    kept = [r for r in refs if r.id in done]
    vectors = (
        np.stack([done[r.id] for r in kept]) if kept else np.zeros((0, config.dim), np.float32)
    )
    return kept, vectors, [failed[r.id] for r in refs if r.id in failed]
