"""``radsearch tune``: the verb around :func:`radsearch.tune.tune_recipe`.

Rows and vectors are read as ``radsearch evaluate`` reads them (``select_rows`` and
``get_vectors`` of :mod:`radsearch.evaluate.runner`): ``--model`` embeds through the
same embedding cache (``--cache-dir``), so tuning after an evaluation of the same
images with the same encoder embeds nothing again, and the reverse. The best recipe
is written as JSON with a record of the split that chose it; attach it with
``radsearch evaluate --recipe`` or :meth:`radsearch.index.Index.set_recipe`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from radsearch.errors import RadsearchError
from radsearch.recipe import Recipe
from radsearch.selection import DEFAULT_OBJECTIVE, OBJECTIVES
from radsearch.source_args import add_source_args, refs_from_args
from radsearch.tune import GRIDS, tune_recipe

DEFAULT_MODEL = "efficientnet-lite0"


def _options(args):
    """The ``EvalOptions`` that read the same rows and vectors ``evaluate`` would."""
    from radsearch.evaluate.runner import EvalOptions

    return EvalOptions(
        csv=str(args.source),
        out=str(args.out),
        root=args.root,
        model=None if args.embeddings else (args.model or DEFAULT_MODEL),
        embeddings=args.embeddings,
        label_columns=[args.label_column],
        index_split=args.index_split,
        query_split=args.val_split,
        cache_dir=args.cache_dir,
        device=args.device,
        weights=args.weights,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )


def load_rows(args):
    """``(index refs, index vectors, val refs, val vectors, model name)``."""
    from radsearch.evaluate.runner import get_vectors, select_rows

    if args.val_split == "test" and not args.i_know_this_is_test:
        raise RadsearchError("refusing to tune on the test split; use --val-split val")
    if args.val_split == args.index_split:
        raise RadsearchError("--val-split and --index-split must differ")
    args.split = None  # both splits are read; --split would drop one
    opts = _options(args)
    refs = refs_from_args(args)
    idx_refs, val_refs = select_rows(refs, opts)
    cfg, _, idx_refs, xi, val_refs, xv = get_vectors(opts, refs, idx_refs, val_refs)
    model = (args.model or "(from --embeddings)") if args.embeddings else cfg.name
    return idx_refs, xi, val_refs, xv, model


def cmd_tune(args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # get_vectors prints its own one-line warnings
        idx_refs, xi, val_refs, xv, model = load_rows(args)
    col = args.label_column
    li = [str(r.metadata.get(col, "")) for r in idx_refs]
    lv = [str(r.metadata.get(col, "")) for r in val_refs]
    print(
        f"tuning on {len(val_refs)} {args.val_split} queries against {len(idx_refs)} "
        f"{args.index_split} rows ({model}, grid {args.grid}); the test split is not read",
        file=sys.stderr,
    )
    groups = _groups(val_refs, args.group_column)
    print(_objective_line(args.objective, len(val_refs), groups), file=sys.stderr)
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    if args.lodo_column:
        recipe, best, plain, trials = _tune_lodo(args, idx_refs, xi, li, val_refs, xv, lv, groups)
    else:
        recipe, best, trials = tune_recipe(
            xi, li, xv, lv, args.grid, log=log, objective=args.objective, groups=groups
        )
        plain = trials[0]
        for t in trials[1:]:
            if t.get("kept") and t.get("confidence") is not None:
                desc = Recipe(t["steps"]).describe()
                print(f"kept {desc} (confidence {t['confidence']:.2f})", file=sys.stderr)
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
            "objective": args.objective,
            "grid": args.grid,
            "lodo_column": args.lodo_column,
        },
        "val_metrics": {k: v for k, v in best.items() if k != "per_label_p@1"},
        "val_metrics_plain": {k: v for k, v in plain.items() if k != "steps"},
        "trials": trials,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    if args.apply:
        _apply(args, recipe)
    desc = recipe.describe() if recipe else "none (plain cosine kNN was best)"
    p10 = "p@10_micro" if "p@10_micro" in best else "p@1_micro"
    print(
        f"best recipe on {args.val_split}: {desc}\n"
        f"  P@1 macro {plain['p@1_macro']:.4f} -> {best['p@1_macro']:.4f}, "
        f"P@10 micro {plain[p10]:.4f} -> {best[p10]:.4f}\n"
        f"wrote {args.out}"
    )
    return 0


def _tune_lodo(args, idx_refs, xi, li, val_refs, xv, lv, groups):
    """``--lodo-column``: the recipe chosen leaving each value out; prints the folds.
    Returns ``(recipe, whole-val figures, plain figures, one record per fold)``."""
    from radsearch.lodo import format_table, lodo_recipe

    col = args.lodo_column
    vi = [str(r.metadata.get(col, "")) for r in idx_refs]
    vv = [str(r.metadata.get(col, "")) for r in val_refs]
    if len(set(vv) - {""}) < 2:
        raise RadsearchError(
            f"{args.source}: --lodo-column needs a {col!r} column with at least two "
            f"values among the {args.val_split} rows"
        )
    choice, folds, whole = lodo_recipe(
        xi, li, vi, xv, lv, vv, groups, grid=args.grid, objective=args.objective
    )
    print(f"leaving each {col} out ({args.val_split} figures):", file=sys.stderr)
    print(format_table(folds, baseline="no recipe"), file=sys.stderr)
    records = [
        {"held_out": f.held_out, "steps": f.choice.steps, "plain": f.plain, "chosen": f.chosen}
        for f in folds
    ]
    recipe = Recipe(choice.steps) if choice.steps else None
    return recipe, whole["chosen"], whole["plain"], records


def _groups(refs, column: str | None):
    """Bootstrap units of the tuning queries: ``column`` (e.g. the patient) where set,
    otherwise each query alone."""
    if not column:
        return None
    vals = [str(r.metadata.get(column) or "") for r in refs]
    return [v or f"query-{i}" for i, v in enumerate(vals)] if any(vals) else None


def _objective_line(name: str, queries: int, groups) -> str:
    units = f"{len(set(groups))} groups" if groups else "each query alone"
    return f"objective {name}: {queries} tuning queries (bootstrap resamples {units})"


def _apply(args, recipe) -> None:
    """``--apply``: attach the recipe to an index, fitted on that index's own vectors."""
    from radsearch.index import Index

    target = Index.open(args.apply)
    if args.model and not args.embeddings:
        target.check_model(args.model)
    target.set_recipe(recipe)
    target.save()
    print(f"attached the recipe to {target.path} ({target.count} items)", file=sys.stderr)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="choose a retrieval recipe on a validation split (never the test split)"
    )
    p.add_argument("source", help="CSV manifest with a 'split' column and a label column")
    p.add_argument("--val-split", default="val", help="split whose rows are the tuning queries")
    p.add_argument("--index-split", default="train", help="split whose rows form the index")
    p.add_argument(
        "--label-column", default="label", help="metadata column scored (not used by the recipe)"
    )
    p.add_argument("--model", help=f"encoder (default {DEFAULT_MODEL})")
    p.add_argument("--weights", help="weights file or directory for the encoder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--embeddings",
        help="precomputed vectors (.npz with emb + filepath, .npy, .h5) instead of embedding",
    )
    p.add_argument(
        "--cache-dir",
        "--work",
        dest="cache_dir",
        help="embedding cache, shared with evaluate (default ~/.cache/radsearch/evaluate)",
    )
    p.add_argument("--grid", choices=sorted(GRIDS), default="default")
    p.add_argument(
        "--objective",
        choices=sorted(OBJECTIVES),
        default=DEFAULT_OBJECTIVE,
        help="robust (default): keep a step only if it lowers no P@1 micro/macro or P@10 "
        "micro beyond the bootstrap noise; p1-macro: the older P@1-macro objective",
    )
    p.add_argument(
        "--group-column",
        default="group_id",
        help="metadata column whose groups the bootstrap resamples whole (default group_id)",
    )
    p.add_argument(
        "--lodo-column",
        metavar="COLUMN",
        help="leave-one-out over this column's values (e.g. dataset): choose the recipe "
        "without each value, score that value's val queries; write the recipe most "
        "values chose",
    )
    p.add_argument("--out", default="recipe.json", help="where to write the best recipe")
    p.add_argument(
        "--apply",
        metavar="INDEX_DIR",
        help="also attach the best recipe to this index (fitted on its own vectors)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--i-know-this-is-test", action="store_true", help=argparse.SUPPRESS)
    add_source_args(p)
    p.set_defaults(func=cmd_tune)
