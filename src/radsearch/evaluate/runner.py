"""``radsearch evaluate`` end to end: CSV + embeddings -> metrics.json, CSV tables,
report.html. See docs/evaluation.md for the protocol and the output schema."""

from __future__ import annotations

import csv
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

TABLE_KS = (1, 3, 5, 10)
NEIGHBOURS_FILE = "neighbours.npz"


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
    max_k: int = 100
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
    batch_size: int = 32
    workers: int | None = None
    progress: bool = True


def _log(opts: EvalOptions, msg: str) -> None:
    if opts.progress:
        print(f"evaluate: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
    print(f"radsearch: warning: {msg}", file=sys.stderr)


def load_recipe(path: str | None):
    """The ``--recipe`` JSON file as a ``Recipe`` (None without one)."""
    if not path:
        return None
    if not Path(path).is_file():
        raise RadsearchError(f"--recipe {path}: no such file")
    from radsearch.recipe import load_recipe as read_recipe

    return read_recipe(path)


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
        batch_size=opts.batch_size,
        workers=opts.workers,
        progress=opts.progress,
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


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])


def per_label_rows(cm: protocol.ColumnMetrics) -> list[list]:
    p = cm.precision
    K = p.per_query.shape[1]
    vote_k = max((k for k in cm.predictions), default=None)
    rows = []
    for c, label in enumerate(cm.vocab):
        nq = int(p.per_label_queries[c])
        row = [label, int(cm.index_counts[c]), nq, int(p.absent.get(c, 0))]
        row += [float(p.per_label_mean[c, k - 1]) if nq and k <= K else "" for k in TABLE_KS]
        if vote_k and nq:
            mask = cm.true_codes == c
            row.append(float((cm.predictions[vote_k][mask] == c).mean()))
        else:
            row.append("")
        rows.append(row)
    return rows


def per_group_rows(cm: protocol.ColumnMetrics, groups: list[str]) -> list[list]:
    """Micro modified P@k per group (e.g. source dataset) over the scored queries."""
    p = cm.precision
    K = p.per_query.shape[1]
    g = np.asarray(groups, dtype=object)[p.scored]
    rows = []
    for name in sorted(set(g.tolist())):
        m = g == name
        pq = p.per_query[m]
        rows.append(
            [cm.column, name, int(m.sum())]
            + [float(pq[:, k - 1].mean()) if k <= K else "" for k in TABLE_KS]
        )
    return rows


def run_evaluation(opts: EvalOptions) -> dict:
    """Run the protocol and write every output into ``opts.out``; returns metrics."""
    from radsearch import __version__
    from radsearch.io.sources import iter_source

    if opts.max_k < 1:
        raise RadsearchError(f"--max-k must be at least 1 (got {opts.max_k})")
    csv_path = Path(opts.csv)
    refs = list(iter_source(csv_path, root=opts.root))
    index_refs, query_refs = select_rows(refs, opts)
    recipe = load_recipe(opts.recipe)
    dataset_hash = embeddings.file_digest(csv_path)
    cfg, enc_info, index_refs, ivecs, query_refs, qvecs = get_vectors(
        opts, refs, index_refs, query_refs
    )
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)

    _log(opts, f"index {len(index_refs)} rows, {len(query_refs)} queries, dim {ivecs.shape[1]}")
    index = analyses.make_index(cfg, index_refs, ivecs, recipe)
    recipe_spec = index.manifest.get("recipe")
    K = min(opts.max_k, index.count)
    key = _neighbour_key(enc_info, dataset_hash, opts, index_refs, query_refs, K, recipe_spec)
    cache = out / NEIGHBOURS_FILE
    nb = scores = None
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                nb, scores = z["rows"], z["scores"]
                _log(opts, f"reusing neighbours from {cache}")
    if nb is None:
        scores, nb = analyses.neighbours(index, qvecs, K, progress=opts.progress)
        tmp = out / (NEIGHBOURS_FILE + ".tmp.npz")
        np.savez(tmp, key=np.asarray(key), rows=nb, scores=scores)
        os.replace(tmp, cache)

    metrics: dict = {
        "radsearch_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "encoder": enc_info,
        "recipe": recipe_spec,
        "dataset": {
            "csv": str(csv_path),
            "hash": dataset_hash,
            "rows": len(refs),
            "split_column": opts.split_column,
            "index_split": opts.index_split,
            "query_split": opts.query_split,
        },
        "counts": {
            "index": len(index_refs),
            "queries": len(query_refs),
            "dim": int(ivecs.shape[1]),
            "k": K,
        },
        "label_columns": list(opts.label_columns),
        "precision_at_k": {},
        "plain_precision_at_k": {},
        "map_at_k": {},
        "recall_at_k": {},
        "knn_classification": {},
        "absent_from_index": {},
        "label_counts": {},
    }
    col_metrics: dict[str, protocol.ColumnMetrics] = {}
    group_rows: list[list] = []
    has_group = opts.group_column in refs[0].metadata
    for col in opts.label_columns:
        qv = [r.metadata.get(col, "") for r in query_refs]
        iv = [r.metadata.get(col, "") for r in index_refs]
        unlabelled = sum(1 for v in qv if v == "")
        if unlabelled == len(qv):
            raise RadsearchError(f"column {col!r}: every query row is empty")
        cm = protocol.column_metrics(col, nb, qv, iv, max_k=K)
        col_metrics[col] = cm
        js = cm.to_json()
        for name in (
            "precision_at_k",
            "plain_precision_at_k",
            "map_at_k",
            "recall_at_k",
            "knn_classification",
            "absent_from_index",
        ):
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
        _write_csv(
            out / f"per_label_{_safe(col)}.csv",
            ["label", "index_rows", "queries", "queries_absent_from_index"]
            + [f"P@{k}" for k in TABLE_KS]
            + ["knn_vote_recall"],
            per_label_rows(cm),
        )
        if has_group:
            group_rows += per_group_rows(
                cm, [r.metadata.get(opts.group_column, "") for r in query_refs]
            )
    if has_group:
        _write_csv(
            out / f"per_{_safe(opts.group_column)}.csv",
            ["column", opts.group_column, "queries"] + [f"P@{k}" for k in TABLE_KS],
            group_rows,
        )
    _write_csv(
        out / "summary.csv",
        ["column", "average"] + [f"P@{k}" for k in TABLE_KS],
        [
            [c, avg] + [metrics["precision_at_k"][c][avg].get(str(k), "") for k in TABLE_KS]
            for c in opts.label_columns
            for avg in ("micro", "macro")
        ],
    )

    columns = {
        c: (
            [r.metadata.get(c, "") for r in query_refs],
            [r.metadata.get(c, "") for r in index_refs],
        )
        for c in opts.label_columns
    }
    fractions = [f for f in opts.index_fractions if 0 < f <= 1]
    if fractions:
        _log(opts, f"index-size study: fractions {fractions}, {opts.seeds} seed(s)")
        metrics["index_size"] = analyses.index_size_study(
            cfg,
            index_refs,
            ivecs,
            qvecs,
            columns,
            fractions,
            seeds=opts.seeds,
            max_k=min(10, K),
            recipe=recipe,
            progress=opts.progress,
        )

    allvecs = np.concatenate([ivecs, qvecs])
    allrefs = index_refs + query_refs
    extra_cols = [
        c for c in ("modality", "anatomy") if c in refs[0].metadata and c not in opts.label_columns
    ]
    map_cols = list(opts.label_columns) + extra_cols
    if opts.quality_sample > 0:
        _log(opts, f"embedding-space quality on {min(opts.quality_sample, len(allvecs))} rows")
        rows = analyses.sample_rows(len(allvecs), opts.quality_sample, seed=0)
        metrics["embedding_quality"] = analyses.embedding_quality(
            allvecs[rows],
            {c: [allrefs[i].metadata.get(c, "") for i in rows] for c in opts.label_columns},
        )
    map_data = None
    if opts.map_method != "none" and opts.map_sample > 0:
        rows = analyses.sample_rows(len(allvecs), opts.map_sample, seed=1)
        _log(opts, f"2-D map of {len(rows)} rows")
        coords, method = analyses.map_2d(allvecs[rows], opts.map_method)
        map_data = {
            "coords": coords,
            "method": method,
            "labels": {c: [allrefs[i].metadata.get(c, "") for i in rows] for c in map_cols},
        }
        metrics["map"] = {"method": method, "sample": int(len(rows))}
    if opts.probe:
        _log(opts, "linear probe")
        metrics["linear_probe"] = {
            c: analyses.linear_probe(
                ivecs, columns[c][1], qvecs, columns[c][0], max_train=opts.probe_max_train
            )
            for c in opts.label_columns
        }

    (out / "metrics.json").write_text(json.dumps(_clean(metrics), indent=1))
    if opts.report:
        from radsearch.evaluate.report import write_report

        write_report(
            out,
            metrics,
            col_metrics,
            nb,
            scores,
            index_refs,
            query_refs,
            map_data,
            gallery=opts.gallery,
        )
    _log(
        opts,
        f"wrote {out / 'metrics.json'}" + (f" and {out / 'report.html'}" if opts.report else ""),
    )
    return metrics


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


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
