"""``radsearch evaluate`` end to end: CSV + embeddings -> metrics.json, CSV tables,
report.html. See docs/evaluation.md for the protocol and the output schema.

:func:`run_evaluation` is a sequence of named steps: :func:`load_data` (rows, splits,
vectors, recipe), :func:`search_neighbours` (``knn_rows`` on a scratch index, cached
in the output folder), :func:`metrics_header`, :func:`score_column` per label column,
``tables.write_tables``, :func:`run_analyses`, then metrics.json and the report.
``radsearch tune`` reads its rows and vectors through :func:`select_rows` and
:func:`get_vectors` too, so both verbs share the embedding cache.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.evaluate import analyses, embeddings, protocol
from radsearch.evaluate.tables import write_tables

NEIGHBOURS_FILE = "neighbours.npz"
# metrics.json sections filled per label column from ``ColumnMetrics.to_json``
COLUMN_SECTIONS = (
    "precision_at_k",
    "plain_precision_at_k",
    "map_at_k",
    "recall_at_k",
    "knn_classification",
    "absent_from_index",
)


@dataclass
class EvalOptions:
    csv: str
    out: str
    root: str | None = None
    model: str | None = None
    embeddings: str | None = None
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    index_split: str = "train"
    query_split: str = "test"
    split_column: str = "split"
    group_column: str = "dataset"
    max_k: int = protocol.DEFAULT_MAX_K
    cache_dir: str | None = None
    recipe: str | None = None
    index_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.25, 0.5, 1.0])
    seeds: int = 3
    quality_sample: int = 2000
    map_method: str = "auto"  # auto | umap | tsne | none
    map_sample: int = 2000
    probe: bool = True
    probe_max_train: int = 20000
    gallery: int = 12
    report: bool = True
    device: str = "cpu"
    weights: str | None = None
    batch_size: int = 32
    workers: int | None = None
    progress: bool = True
    study_column: str | None = None  # studies as queries too (radsearch.evaluate.studies)
    roi_csv: str | None = None  # region metrics (radsearch.regions.evaluate)
    region_grids: str | None = None  # a grid cache for them (else computed)


def _log(opts: EvalOptions, msg: str) -> None:
    if opts.progress:
        print(f"evaluate: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
    print(f"radsearch: warning: {msg}", file=sys.stderr)


def select_rows(refs, opts: EvalOptions):
    """(index refs, query refs), checking the label columns and splits exist."""
    if not refs:
        raise RadsearchError(f"{opts.csv}: no rows")
    cols = set(refs[0].metadata)
    for col in [opts.split_column, *opts.label_columns]:
        if col not in cols:
            raise RadsearchError(
                f"{opts.csv}: no column {col!r} (columns: {', '.join(sorted(cols))})"
            )
    splits = sorted({r.metadata.get(opts.split_column, "") for r in refs})
    index_refs = [r for r in refs if r.metadata.get(opts.split_column) == opts.index_split]
    query_refs = [r for r in refs if r.metadata.get(opts.split_column) == opts.query_split]
    if not index_refs:
        raise RadsearchError(
            f"{opts.csv}: no rows with {opts.split_column}={opts.index_split!r} for the index "
            f"(splits present: {', '.join(splits)})"
        )
    if not query_refs:
        raise RadsearchError(
            f"{opts.csv}: empty query set: no rows with {opts.split_column}={opts.query_split!r} "
            f"(splits present: {', '.join(splits)})"
        )
    return index_refs, query_refs


def external_config(path: str, dim: int):
    from radsearch.encoders import EncoderConfig

    return EncoderConfig(name=f"external:{path}", family="external", model_id=str(path), dim=dim)


def get_vectors(opts: EvalOptions, refs, index_refs, query_refs):
    """(encoder config, encoder info, index refs, index vecs, query refs, query vecs)."""
    if bool(opts.model) == bool(opts.embeddings):
        raise RadsearchError("give exactly one of --model NAME or --embeddings FILE")
    wanted = index_refs + query_refs
    if opts.embeddings:
        all_ids = [r.id for r in refs]
        path = Path(opts.embeddings)
        if path.suffix.lower() == ".npy":
            full = embeddings.load_embeddings(path, all_ids)
            pos = {r.id: i for i, r in enumerate(refs)}
            vecs = full[[pos[r.id] for r in wanted]]
        else:
            vecs = embeddings.load_embeddings(path, [r.id for r in wanted])
        cfg = external_config(str(path), vecs.shape[1])
        info = {
            "name": cfg.name,
            "hash": embeddings.file_digest(path),
            "source": "embeddings",
            "file": str(path),
            "dim": int(vecs.shape[1]),
        }
        n = len(index_refs)
        return cfg, info, index_refs, vecs[:n], query_refs, vecs[n:]
    root = opts.root or str(Path(opts.csv).parent)
    cfg, kept, vecs, failures, work = embeddings.compute_embeddings(
        wanted,
        opts.model,
        opts.cache_dir,
        root,
        device=opts.device,
        weights=opts.weights,
        batch_size=opts.batch_size,
        workers=opts.workers,
        progress=opts.progress,
        calibration_refs=index_refs,
    )
    if failures:
        _warn(
            f"{len(failures)} image(s) could not be read and are left out "
            f"(first: {failures[0]['source']}: {failures[0]['reason']})"
        )
    pos = {r.id: i for i, r in enumerate(kept)}
    index_refs = [r for r in index_refs if r.id in pos]
    query_refs = [r for r in query_refs if r.id in pos]
    if not index_refs or not query_refs:
        raise RadsearchError("no readable images left in the index or the query split")
    info = {
        "name": cfg.name,
        "hash": cfg.hash,
        "source": "model",
        "cache": str(work),
        "dim": int(cfg.dim),
        "failed": len(failures),
    }
    return (
        cfg,
        info,
        index_refs,
        vecs[[pos[r.id] for r in index_refs]],
        query_refs,
        vecs[[pos[r.id] for r in query_refs]],
    )


def _neighbour_key(info, dataset_hash, opts, index_refs, query_refs, k, recipe_spec) -> str:
    h = hashlib.sha256()
    for part in (
        info["name"],
        info["hash"],
        info.get("cache", ""),
        dataset_hash,
        opts.index_split,
        opts.query_split,
        str(k),
        json.dumps(recipe_spec, sort_keys=True, default=str),
        str(len(index_refs)),
        str(len(query_refs)),
    ):
        h.update(part.encode() + b"\0")
    for r in index_refs + query_refs:
        h.update(r.id.encode() + b"\0")
    return h.hexdigest()[:20]


@dataclass
class EvalData:
    """What every step of an evaluation reads: the rows, their vectors, the recipe."""

    refs: list
    index_refs: list
    query_refs: list
    ivecs: np.ndarray
    qvecs: np.ndarray
    config: object
    encoder_info: dict
    recipe: object
    dataset_hash: str

    def column(self, name: str) -> tuple[list, list]:
        """(query values, index values) of a metadata column ("" where missing)."""
        return (
            [r.metadata.get(name, "") for r in self.query_refs],
            [r.metadata.get(name, "") for r in self.index_refs],
        )


def load_data(opts: EvalOptions) -> EvalData:
    """Step 1: the CSV's rows, the index and query splits, their vectors, the recipe."""
    from radsearch.io.sources import iter_source
    from radsearch.recipe import load_recipe

    if opts.max_k < 1:
        raise RadsearchError(f"--max-k must be at least 1 (got {opts.max_k})")
    refs = list(iter_source(Path(opts.csv), root=opts.root))
    index_refs, query_refs = select_rows(refs, opts)
    recipe = load_recipe(opts.recipe)
    dataset_hash = embeddings.file_digest(opts.csv)
    cfg, info, index_refs, ivecs, query_refs, qvecs = get_vectors(
        opts, refs, index_refs, query_refs
    )
    return EvalData(refs, index_refs, query_refs, ivecs, qvecs, cfg, info, recipe, dataset_hash)


def search_neighbours(opts: EvalOptions, data: EvalData, out: Path):
    """Step 2: ``(k, index, scores, rows)`` of every query, reused from ``out`` when the
    same vectors, rows, k and recipe produced them before."""
    index = analyses.scratch_index(data.ivecs, data.index_refs, data.config, data.recipe)
    k = min(opts.max_k, index.count)
    key = _neighbour_key(
        data.encoder_info,
        data.dataset_hash,
        opts,
        data.index_refs,
        data.query_refs,
        k,
        index.manifest.get("recipe"),
    )
    cache = out / NEIGHBOURS_FILE
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                _log(opts, f"reusing neighbours from {cache}")
                return k, index, z["scores"], z["rows"]
    scores, rows = analyses.neighbours(index, data.qvecs, k, progress=opts.progress)
    tmp = out / (NEIGHBOURS_FILE + ".tmp.npz")
    np.savez(tmp, key=np.asarray(key), rows=rows, scores=scores)
    os.replace(tmp, cache)
    return k, index, scores, rows


def metrics_header(opts: EvalOptions, data: EvalData, k: int, recipe_spec) -> dict:
    """Step 3: the record of what was evaluated, with empty metric sections to fill."""
    from radsearch import __version__

    return {
        "radsearch_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "encoder": data.encoder_info,
        "recipe": recipe_spec,
        "dataset": {
            "csv": str(Path(opts.csv)),
            "hash": data.dataset_hash,
            "rows": len(data.refs),
            "split_column": opts.split_column,
            "index_split": opts.index_split,
            "query_split": opts.query_split,
        },
        "counts": {
            "index": len(data.index_refs),
            "queries": len(data.query_refs),
            "dim": int(data.ivecs.shape[1]),
            "k": k,
        },
        "label_columns": list(opts.label_columns),
        **{name: {} for name in COLUMN_SECTIONS},
        "label_counts": {},
    }


def score_column(opts, data: EvalData, metrics: dict, col: str, rows, k: int):
    """Step 4, per label column: the protocol's metrics into ``metrics``, with a warning
    for queries left out (unlabelled, or with a label the index lacks)."""
    qv, iv = data.column(col)
    unlabelled = sum(1 for v in qv if v == "")
    if unlabelled == len(qv):
        raise RadsearchError(f"column {col!r}: every query row is empty")
    cm = protocol.column_metrics(col, rows, qv, iv, max_k=k)
    js = cm.to_json()
    for name in COLUMN_SECTIONS:
        metrics[name][col] = js[name]
    metrics["absent_from_index"][col]["unlabelled_queries"] = unlabelled
    metrics["label_counts"][col] = js["counts"]
    absent = js["absent_from_index"]
    if absent["queries"]:
        _warn(
            f"column {col!r}: {absent['queries']} query row(s) carry label(s) absent from the "
            f"index ({', '.join(list(absent['labels'])[:5])}); they are left out of every "
            "metric and reported under absent_from_index"
        )
    if unlabelled:
        _warn(f"column {col!r}: {unlabelled} query row(s) have no label and are left out")
    return cm


def run_analyses(opts: EvalOptions, data: EvalData, metrics: dict, k: int):
    """Step 6: the paper's analyses beyond P@k into ``metrics``; returns the 2-D map's
    data for the report (or None)."""
    columns = {c: data.column(c) for c in opts.label_columns}
    fractions = [f for f in opts.index_fractions if 0 < f <= 1]
    if fractions:
        _log(opts, f"index-size study: fractions {fractions}, {opts.seeds} seed(s)")
        metrics["index_size"] = analyses.index_size_study(
            data.config,
            data.index_refs,
            data.ivecs,
            data.qvecs,
            columns,
            fractions,
            seeds=opts.seeds,
            max_k=min(10, k),
            recipe=data.recipe,
            progress=opts.progress,
        )
    allvecs = np.concatenate([data.ivecs, data.qvecs])
    allrefs = data.index_refs + data.query_refs

    def values(col, rows):
        return [allrefs[i].metadata.get(col, "") for i in rows]

    if opts.quality_sample > 0:
        _log(opts, f"embedding-space quality on {min(opts.quality_sample, len(allvecs))} rows")
        rows = analyses.sample_rows(len(allvecs), opts.quality_sample, seed=0)
        metrics["embedding_quality"] = analyses.embedding_quality(
            allvecs[rows], {c: values(c, rows) for c in opts.label_columns}
        )
    map_data = None
    if opts.map_method != "none" and opts.map_sample > 0:
        extra = [
            c
            for c in ("modality", "anatomy")
            if c in data.refs[0].metadata and c not in opts.label_columns
        ]
        rows = analyses.sample_rows(len(allvecs), opts.map_sample, seed=1)
        _log(opts, f"2-D map of {len(rows)} rows")
        coords, method = analyses.map_2d(allvecs[rows], opts.map_method)
        labels = {c: values(c, rows) for c in [*opts.label_columns, *extra]}
        map_data = {"coords": coords, "method": method, "labels": labels}
        metrics["map"] = {"method": method, "sample": int(len(rows))}
    if opts.probe:
        _log(opts, "linear probe")
        metrics["linear_probe"] = {
            c: analyses.linear_probe(
                data.ivecs, columns[c][1], data.qvecs, columns[c][0], max_train=opts.probe_max_train
            )
            for c in opts.label_columns
        }
    return map_data


def run_evaluation(opts: EvalOptions) -> dict:
    """Run the protocol and write every output into ``opts.out``; returns metrics."""
    data = load_data(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    _log(
        opts,
        f"index {len(data.index_refs)} rows, {len(data.query_refs)} queries, "
        f"dim {data.ivecs.shape[1]}",
    )
    k, index, scores, rows = search_neighbours(opts, data, out)
    metrics = metrics_header(opts, data, k, index.manifest.get("recipe"))
    col_metrics = {
        col: score_column(opts, data, metrics, col, rows, k) for col in opts.label_columns
    }
    if opts.study_column:
        from radsearch.evaluate.studies import study_step

        study_step(opts, data, metrics, index)
    region_gallery = None
    if opts.roi_csv:
        from radsearch.regions.evaluate import roi_step

        region_gallery = roi_step(opts, data, metrics, index)
    write_tables(opts, data, metrics, col_metrics, out)
    map_data = run_analyses(opts, data, metrics, k)
    (out / "metrics.json").write_text(json.dumps(_clean(metrics), indent=1))
    if opts.report:
        from radsearch.evaluate.report import write_report

        write_report(
            out,
            metrics,
            col_metrics,
            rows,
            scores,
            data.index_refs,
            data.query_refs,
            map_data,
            gallery=opts.gallery,
            region_gallery=region_gallery,
        )
    _log(
        opts,
        f"wrote {out / 'metrics.json'}" + (f" and {out / 'report.html'}" if opts.report else ""),
    )
    return metrics


def _clean(obj):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
