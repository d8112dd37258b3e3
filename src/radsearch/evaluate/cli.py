"""``radsearch evaluate`` and ``radsearch compare`` (registered by ``radsearch.cli``)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from radsearch.errors import RadsearchError
from radsearch.evaluate.protocol import DEFAULT_MAX_K


def _fractions(text: str) -> list[float]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise RadsearchError(
            f"--index-fractions {text!r}: expected numbers like 0.1,0.5,1"
        ) from None
    bad = [v for v in vals if not 0 < v <= 1]
    if bad:
        raise RadsearchError(f"--index-fractions: {bad[0]} is not in (0, 1]")
    return vals


def cmd_evaluate(args) -> int:
    from radsearch.evaluate.runner import EvalOptions, run_evaluation

    opts = EvalOptions(
        csv=args.csv,
        out=args.out,
        root=args.root,
        model=args.model,
        embeddings=args.embeddings,
        label_columns=args.label_column or ["label"],
        index_split=args.index_split,
        query_split=args.query_split,
        split_column=args.split_column,
        group_column=args.group_column,
        max_k=args.max_k,
        cache_dir=args.cache_dir,
        recipe=args.recipe,
        index_fractions=_fractions(args.index_fractions),
        seeds=args.seeds,
        quality_sample=args.quality_sample,
        map_method=args.map,
        map_sample=args.map_sample,
        probe=not args.no_probe,
        gallery=args.gallery,
        report=not args.no_report,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        study_column=args.study_column,
        roi_csv=args.roi_csv,
        region_grids=args.region_grids,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # runner prints its own one-line warnings
        m = run_evaluation(opts)
    print(
        f"{m['encoder']['name']}: {m['counts']['queries']} queries into {m['counts']['index']} index rows"
    )
    print(f"{'column':<14} {'avg':<6} " + " ".join(f"{'P@' + k:>7}" for k in ("1", "3", "5", "10")))
    for col, pk in m["precision_at_k"].items():
        for avg in ("micro", "macro"):
            vals = [pk[avg].get(k) for k in ("1", "3", "5", "10")]
            print(
                f"{col:<14} {avg:<6} "
                + " ".join("      -" if v is None else f"{v:7.4f}" for v in vals)
            )
    if "study" in m:
        from radsearch.evaluate.studies import print_summary

        print_summary(m)
    print(f"outputs in {opts.out}")
    return 0


def cmd_compare(args) -> int:
    from radsearch.evaluate.report import write_compare

    runs = []
    for d in args.runs:
        path = Path(d) / "metrics.json" if Path(d).is_dir() else Path(d)
        if not path.exists():
            raise RadsearchError(f"{d}: no metrics.json (run 'radsearch evaluate --out {d}' first)")
        try:
            runs.append(
                (
                    Path(d).name if Path(d).is_dir() else path.parent.name,
                    json.loads(path.read_text()),
                )
            )
        except json.JSONDecodeError as exc:
            raise RadsearchError(f"{path}: not valid JSON ({exc})") from None
    hashes = {m["dataset"]["hash"] for _, m in runs}
    if len(hashes) > 1:
        print("radsearch: warning: the runs were evaluated on different datasets", file=sys.stderr)
    page, rows = write_compare(runs, Path(args.out))
    print(
        f"{'run':<24} {'column':<12} {'avg':<6} "
        + " ".join(f"{'P@' + k:>7}" for k in ("1", "3", "5", "10"))
    )
    for r in rows:
        print(
            f"{r[0][:24]:<24} {r[2]:<12} {r[3]:<6} "
            + " ".join("      -" if v is None else f"{v:7.4f}" for v in r[4:])
        )
    print(f"wrote {page}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="benchmark an encoder on a labelled CSV (the paper's protocol)"
    )
    p.add_argument("csv", help="CSV manifest with filepath, split and label columns")
    p.add_argument(
        "--root", help="folder the CSV's file paths are relative to (default: the CSV's)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="encoder name: embed through the pipeline (cached)")
    src.add_argument(
        "--embeddings", help=".npy (row-aligned), .npz (emb + filepath) or .h5 (keyed by filepath)"
    )
    p.add_argument(
        "--label-column",
        action="append",
        metavar="COL",
        help="label column to score (repeatable; default: label)",
    )
    p.add_argument("--index-split", default="train")
    p.add_argument("--query-split", default="test")
    p.add_argument("--split-column", default="split")
    p.add_argument("--group-column", default="dataset", help="per-group table column (if present)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--max-k", type=int, default=DEFAULT_MAX_K, help=f"largest k (default {DEFAULT_MAX_K})"
    )
    p.add_argument(
        "--cache-dir", help="embedding cache for --model (default ~/.cache/radsearch/evaluate)"
    )
    p.add_argument("--recipe", help="retrieval recipe JSON to apply to the index")
    p.add_argument(
        "--roi-csv",
        metavar="ROI.csv",
        help="box table (filepath,x0,y0,x1,y1,label,split): region, localisation, "
        "explain and feedback metrics (docs/regions.md)",
    )
    p.add_argument("--region-grids", metavar="DIR", help="with --roi-csv: a cached grid directory")
    p.add_argument(
        "--index-fractions",
        default="0.01,0.1,0.25,0.5,1",
        help="index-size study fractions, or 'none'",
    )
    p.add_argument("--seeds", type=int, default=3, help="subsamples per index fraction")
    p.add_argument(
        "--quality-sample", type=int, default=2000, help="rows for embedding quality (0: skip)"
    )
    p.add_argument("--map", choices=["auto", "umap", "tsne", "none"], default="auto")
    p.add_argument("--map-sample", type=int, default=2000)
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.add_argument("--gallery", type=int, default=12, help="worst queries shown (0: none)")
    p.add_argument("--no-report", action="store_true", help="no report.html")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--study-column",
        metavar="COL",
        help="also score studies (e.g. group_id): study P@k and its two baselines",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="put several evaluation runs in one table and plot")
    p.add_argument("runs", nargs="+", help="evaluation output directories (or metrics.json files)")
    p.add_argument("--out", default="compare", help="where compare.csv/.png/.html go")
    p.set_defaults(func=cmd_compare)
