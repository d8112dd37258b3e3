"""``radsearch tune``: choose a retrieval recipe on a validation split, label-free steps only.

The index side is the ``--index-split`` rows (default ``train``), the queries are the
``--val-split`` rows (default ``val``); the test split is never read. Each trial
fits the recipe on the index rows (the recipe itself never sees a label) and scores
the validation queries with the reference paper's modified precision through
:func:`radsearch.search.knn_rows`, the neighbour path ``search``, ``serve`` and
``evaluate`` share. The search is greedy over the steps (whiten, cluster, dba, qe,
rerank, in that order): each step keeps the best of its options or stays off.
Labels are read only to score the trials. The best recipe is written as JSON with a
record of the split that chose it; attach it with ``radsearch evaluate --recipe``
or :meth:`radsearch.index.Index.set_recipe`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.recipe import Recipe

KS = (1, 3, 5, 10)

# Options tried per step (``None``: step off). ``quick`` is a smaller grid for CI-sized runs.
GRIDS: dict[str, dict[str, list]] = {
    "default": {
        "whiten": [
            None,
            {"power": 1.0, "shrinkage": 0.1},
            {"power": 0.5, "shrinkage": 0.1},
            {"power": 1.0, "shrinkage": 0.1, "dim": 256},
        ],
        "cluster": [None, {"n": 8, "dim": 64, "power": 0.5}, {"n": 8, "dim": 64, "weight": 2.0}],
        "dba": [None, {"k": 2, "alpha": 3.0}, {"k": 3, "alpha": 3.0}],
        "qe": [None, {"k": 2, "alpha": 3.0}, {"k": 3, "alpha": 3.0}],
        "rerank": [
            None,
            {"k1": 20, "k2": 6, "lambda": 0.3},
            {"k1": 20, "k2": 6, "lambda": 0.6},
            {"k1": 30, "k2": 6, "lambda": 0.8},
        ],
    },
    "quick": {
        "whiten": [None, {"power": 1.0, "shrinkage": 0.1}],
        "cluster": [None, {"n": 4, "dim": 32}],
        "dba": [None, {"k": 3}],
        "qe": [None, {"k": 3}],
        "rerank": [None, {"k1": 10, "k2": 3}],
    },
}


def modified_precision(
    query_labels, neighbour_labels, index_label_counts: dict, ks=KS
) -> dict[str, float]:
    """The reference paper's modified precision at each k, micro and macro.

    ``neighbour_labels``: ``QxK`` labels of each query's hits in rank order (``None``
    for padding). For each query k is capped at the number of index items with its
    label; queries whose label is absent from the index are skipped. Macro averages
    the per-label means.
    """
    q = np.asarray(query_labels, dtype=object)
    nb = np.asarray(neighbour_labels, dtype=object)
    cap = np.asarray([index_label_counts.get(lbl, 0) for lbl in q])
    keep = cap > 0
    q, nb, cap = q[keep], nb[keep], cap[keep]
    match = nb == q[:, None]
    csum = np.cumsum(match, axis=1)
    out: dict[str, float] = {"queries": int(len(q))}
    labels = sorted(set(q.tolist()))
    for k in ks:
        kk = np.minimum(k, cap)
        kk = np.minimum(kk, match.shape[1])
        prec = csum[np.arange(len(q)), kk - 1] / kk
        out[f"p@{k}_micro"] = float(prec.mean()) if len(q) else float("nan")
        per = [float(prec[q == lbl].mean()) for lbl in labels]
        out[f"p@{k}_macro"] = float(np.mean(per)) if per else float("nan")
    return out


def per_label_p1(query_labels, neighbour_labels) -> dict[str, float]:
    q = np.asarray(query_labels, dtype=object)
    top = np.asarray(neighbour_labels, dtype=object)[:, 0]
    return {lbl: float(np.mean(top[q == lbl] == lbl)) for lbl in sorted(set(q.tolist()))}


class VectorIndex:
    """A throw-away in-memory :class:`~radsearch.index.Index` over given vectors."""

    def __init__(self, vectors: np.ndarray, ids: list[str] | None = None, name: str = "tune"):
        from radsearch.encoders import EncoderConfig
        from radsearch.index import Index
        from radsearch.io.items import ItemRef

        vectors = np.asarray(vectors, np.float32)
        cfg = EncoderConfig(name=name, family="vectors", model_id=name, dim=int(vectors.shape[1]))
        self._tmp = tempfile.TemporaryDirectory(prefix="radsearch-tune-")
        self.index = Index.create(Path(self._tmp.name) / "index", cfg)
        ids = ids or [str(i) for i in range(len(vectors))]
        self.index.add([ItemRef(id=i, source=i) for i in ids], vectors)

    def neighbours(self, recipe: Recipe | None, queries: np.ndarray, k: int):
        from radsearch.search import knn_rows

        self.index.set_recipe(recipe)
        return knn_rows(self.index, queries, k)


def score_recipe(vindex: VectorIndex, recipe, queries, query_labels, index_labels, ks=KS) -> dict:
    index_labels = np.asarray(index_labels, dtype=object)
    counts = dict(zip(*np.unique(index_labels, return_counts=True), strict=True))
    t0 = time.perf_counter()
    _, rows = vindex.neighbours(recipe, queries, max(ks))
    seconds = time.perf_counter() - t0
    nb = np.where(rows >= 0, index_labels[np.clip(rows, 0, None)], None)
    m = modified_precision(query_labels, nb, counts, ks)
    m["seconds"] = round(seconds, 3)
    m["per_label_p@1"] = per_label_p1(query_labels, nb)
    return m


def _objective(m: dict) -> tuple:
    return (round(m["p@1_macro"], 6), round(m["p@10_micro"], 6))


def tune_recipe(
    index_vectors: np.ndarray,
    index_labels,
    val_vectors: np.ndarray,
    val_labels,
    grid: str | dict = "default",
    *,
    flip_val_vectors: np.ndarray | None = None,
    log=None,
) -> tuple[Recipe | None, dict, list[dict]]:
    """Greedy search over :data:`GRIDS`; returns ``(best recipe, its metrics, trials)``.

    ``flip_val_vectors`` (the validation queries' mirrored-image embeddings, optional)
    lets the search try flip TTA too.
    """
    options = GRIDS[grid] if isinstance(grid, str) else grid
    vindex = VectorIndex(index_vectors)
    trials: list[dict] = []

    def run(steps: dict, queries) -> dict:
        recipe = Recipe(steps) if steps else None
        m = score_recipe(vindex, recipe, queries, val_labels, index_labels)
        trials.append({"steps": json.loads(json.dumps(steps)), **{k: v for k, v in m.items() if k != "per_label_p@1"}})
        if log:
            log(f"  {Recipe(steps).describe():<70} P@1 macro {m['p@1_macro']:.4f}  P@10 micro {m['p@10_micro']:.4f}")
        return m

    best_steps: dict = {}
    queries = val_vectors
    best = run({}, queries)
    if flip_val_vectors is not None:
        fq = _flip_mix(val_vectors, flip_val_vectors)
        m = run({"flip": {}}, fq)
        if _objective(m) > _objective(best):
            best, best_steps, queries = m, {"flip": {}}, fq
    for step, choices in options.items():
        for opt in choices:
            if opt is None:
                continue
            steps = {**best_steps, step: opt}
            m = run(steps, queries)
            if _objective(m) > _objective(best):
                best, best_steps = m, steps
    # steps apply in the recipe's fixed order regardless of the search order
    return (Recipe(best_steps) if best_steps else None), best, trials


def _flip_mix(v: np.ndarray, vf: np.ndarray) -> np.ndarray:
    s = np.asarray(v, np.float32) + np.asarray(vf, np.float32)
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)


# -- CLI --------------------------------------------------------------------------------
def _load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        if "emb" not in z.files or "filepath" not in z.files:
            raise RadsearchError(f"{path}: expected arrays 'emb' and 'filepath'")
        return dict(zip(z["filepath"].tolist(), np.asarray(z["emb"], np.float32), strict=True))


def cmd_tune(args) -> int:
    from radsearch.cli import refs_from_args

    if args.val_split == "test" and not args.i_know_this_is_test:
        raise RadsearchError("refusing to tune on the test split; use --val-split val")
    if args.val_split == args.index_split:
        raise RadsearchError("--val-split and --index-split must differ")
    args.split = None
    refs = refs_from_args(args)
    idx_refs = [r for r in refs if str(r.metadata.get("split", "")) == args.index_split]
    val_refs = [r for r in refs if str(r.metadata.get("split", "")) == args.val_split]
    if not idx_refs or not val_refs:
        raise RadsearchError(
            f"{args.source}: need rows with split={args.index_split} and split={args.val_split} "
            f"(found {len(idx_refs)} and {len(val_refs)})"
        )
    col = args.label_column
    for r in idx_refs[:1] + val_refs[:1]:
        if col not in r.metadata:
            raise RadsearchError(f"{args.source}: no {col!r} column to score the trials with")
    wanted = idx_refs + val_refs
    if args.embeddings:
        table = _load_npz(args.embeddings)
        missing = [r.id for r in wanted if r.id not in table]
        if missing:
            raise RadsearchError(f"{args.embeddings}: no vectors for {len(missing)} row(s), e.g. {missing[0]}")
        vec = {r.id: table[r.id] for r in wanted}
        model = args.model or "(from --embeddings)"
    else:
        from radsearch.embed import embed_refs
        from radsearch.encoders import create_encoder

        encoder = create_encoder(args.model or "efficientnet-lite0", weights=args.weights, device=args.device)
        work = Path(args.work or (Path(args.out).with_suffix("") .as_posix() + ".work")) / encoder.config.hash
        res = embed_refs(wanted, encoder, work, batch_size=args.batch_size, progress=not args.no_progress)
        vec = dict(zip([r.id for r in res.refs], res.vectors, strict=True))
        idx_refs = [r for r in idx_refs if r.id in vec]
        val_refs = [r for r in val_refs if r.id in vec]
        model = encoder.config.name
    xi = np.stack([vec[r.id] for r in idx_refs])
    xv = np.stack([vec[r.id] for r in val_refs])
    li = [str(r.metadata.get(col, "")) for r in idx_refs]
    lv = [str(r.metadata.get(col, "")) for r in val_refs]
    print(
        f"tuning on {len(val_refs)} {args.val_split} queries against {len(idx_refs)} "
        f"{args.index_split} rows ({model}, grid {args.grid}); the test split is not read",
        file=sys.stderr,
    )
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    recipe, best, trials = tune_recipe(xi, li, xv, lv, args.grid, log=log)
    plain = trials[0]
    out = {
        **(recipe.settings() if recipe else {"version": 1, "steps": {}}),
        "chosen_on": {
            "source": str(args.source),
            "val_split": args.val_split,
            "index_split": args.index_split,
            "label_column": col,
            "model": model,
            "queries": len(val_refs),
            "index_rows": len(idx_refs),
            "objective": "p@1_macro, then p@10_micro",
            "grid": args.grid,
        },
        "val_metrics": {k: v for k, v in best.items() if k != "per_label_p@1"},
        "val_metrics_plain": {k: v for k, v in plain.items() if k != "steps"},
        "trials": trials,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    if args.apply:
        from radsearch.index import Index

        target = Index.open(args.apply)
        if args.model and not args.embeddings:
            target.check_model(args.model)
        target.set_recipe(recipe)  # fitted on that index's own embeddings
        target.save()
        print(f"attached the recipe to {target.path} ({target.count} items)", file=sys.stderr)
    desc = recipe.describe() if recipe else "none (plain cosine kNN was best)"
    print(
        f"best recipe on {args.val_split}: {desc}\n"
        f"  P@1 macro {plain['p@1_macro']:.4f} -> {best['p@1_macro']:.4f}, "
        f"P@10 micro {plain['p@10_micro']:.4f} -> {best['p@10_micro']:.4f}\n"
        f"wrote {args.out}"
    )
    return 0


def register(subparsers) -> None:
    from radsearch.cli import _add_source_args

    p = subparsers.add_parser(
        "tune", help="choose a retrieval recipe on a validation split (never the test split)"
    )
    p.add_argument("source", help="CSV manifest with a 'split' column and a label column")
    p.add_argument("--val-split", default="val", help="split whose rows are the tuning queries")
    p.add_argument("--index-split", default="train", help="split whose rows form the index")
    p.add_argument("--label-column", default="label", help="metadata column scored (not used by the recipe)")
    p.add_argument("--model", help="encoder (default efficientnet-lite0)")
    p.add_argument("--weights", help="weights file or directory for the encoder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--embeddings", help="precomputed .npz (arrays emb, filepath = row ids) instead of embedding")
    p.add_argument("--work", help="embedding checkpoint folder (default: next to --out)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="default")
    p.add_argument("--out", default="recipe.json", help="where to write the best recipe")
    p.add_argument("--apply", metavar="INDEX_DIR",
                   help="also attach the best recipe to this index (fitted on its own vectors)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--i-know-this-is-test", action="store_true", help=argparse_suppress())
    _add_source_args(p)
    p.set_defaults(func=cmd_tune)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
