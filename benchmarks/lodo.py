"""Leave-one-dataset-out (LODO) selection on RadBench: does a configuration chosen
without a dataset help on that dataset?

For each of RadBench's 7 datasets in turn, the configuration (encoder among the cached
offline ones and their fusions, and the recipe) is chosen on the other six datasets'
rows only (train = index, val = queries, the tune objective), then the held-out
dataset's test queries are scored against the full train index, next to plain
``efficientnet-lite0``. Prints the table, the recommended configuration (the one most
folds chose) and the done-when checks of that recommendation.

    python benchmarks/lodo.py [--fusions A+B ...] [--out runs/lodo.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radbench_vectors import CACHE, CSV, LITE0, load_table, load_vectors  # noqa: E402

from radsearch.lodo import (  # noqa: E402
    BASELINE,
    Choice,
    Fold,
    format_table,
    leave_one_out,
    recommend,
    score_configuration,
)

FUSIONS = ["efficientnet-lite0-deep-eq+efficientnet-lite2-deep-eq"]


def done_when(folds, rec) -> list[str]:
    """The issue's bar for a recommended configuration, on the folds that chose it."""
    d1 = [
        (f.chosen["p@1_micro"] - f.plain["p@1_micro"], f.chosen["p@1_macro"] - f.plain["p@1_macro"])
        for f in folds
    ]
    at_least = sum(1 for a, b in d1 if a >= 0 and b >= 0)
    worst = min(min(a, b) for a, b in d1)
    mean_macro = float(np.mean([b for _, b in d1]))
    ok = at_least >= 6 and worst >= -0.02 and mean_macro >= 0.03
    return [
        f">= plain on P@1 micro and macro: {at_least} of {len(folds)} (need 6)",
        f"largest drop on either: {worst:+.3f} (need >= -0.02)",
        f"mean P@1 macro lift: {mean_macro:+.3f} (need >= +0.03)",
        f"wins the LODO table: {'yes' if ok else 'no'}",
    ]


def recommended_folds(table, vectors, rec: Choice) -> list[Fold]:
    """The recommendation itself on every held-out dataset's test rows (figures of
    the folds that chose it are LODO figures; the others chose something else)."""
    out = []
    for held in sorted(set(table["dataset"].tolist())):
        test = (table["dataset"] == held) & (table["split"] == "test")
        plain = score_configuration(table, vectors, BASELINE, {}, test)
        got = score_configuration(table, vectors, rec.encoder, rec.steps, test)
        out.append(Fold(held, rec, plain, got))
    return out


def load_folds(path: Path) -> list[Fold]:
    d = json.loads(path.read_text())
    return [
        Fold(
            f["held_out"], Choice(f["encoder"], f["steps"], f["selection"]), f["plain"], f["chosen"]
        )
        for f in d["folds"]
    ]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--csv", type=Path, default=CSV)
    ap.add_argument("--cache", type=Path, default=CACHE, help="folder of <encoder>-<hash>.npz")
    ap.add_argument("--lite0", type=Path, default=LITE0, help="plain efficientnet-lite0 vectors")
    ap.add_argument("--fusions", nargs="*", default=FUSIONS)
    ap.add_argument("--only", nargs="*", help="restrict to these encoder names")
    ap.add_argument("--screen", type=int, default=1, help="encoders given the full recipe search")
    ap.add_argument("--objective", default="robust")
    ap.add_argument("--out", type=Path, help="write folds and recommendation as JSON")
    ap.add_argument("--reuse", type=Path, help="read the folds from an earlier --out JSON")
    args = ap.parse_args()

    t0 = time.time()
    table = load_table(args.csv)
    vectors = load_vectors(table, args.cache, args.lite0, args.fusions)
    if args.only:
        vectors = {k: v for k, v in vectors.items() if k in args.only or k == BASELINE}
    print(f"candidates: {', '.join(f'{k} ({v.shape[1]}-d)' for k, v in vectors.items())}")
    if args.reuse:
        folds = load_folds(args.reuse)
    else:
        folds = leave_one_out(
            table,
            vectors,
            "dataset",
            objective=args.objective,
            screen=args.screen,
            log=lambda s: print(s, flush=True),
        )
    print()
    print(format_table(folds))
    rec = recommend(folds)
    print(f"\nrecommended (chosen by the most folds): {rec.describe()}")
    print(f"folds that chose it: {sum(f.choice.key() == rec.key() for f in folds)} of {len(folds)}")
    rec_folds = recommended_folds(table, vectors, rec)
    print("\nthe recommendation on every held-out dataset (test):")
    print(format_table(rec_folds))
    for line in done_when(rec_folds, rec):
        print("  " + line)
    print(f"\n{time.time() - t0:.0f} s")
    if args.out and not args.reuse:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "objective": args.objective,
                    "candidates": list(vectors),
                    "folds": [
                        {
                            "held_out": f.held_out,
                            "encoder": f.choice.encoder,
                            "steps": f.choice.steps,
                            "plain": f.plain,
                            "chosen": f.chosen,
                            "selection": f.choice.selection,
                            "confidence": f.choice.confidence,
                            "log": f.choice.log,
                        }
                        for f in folds
                    ],
                    "recommended": {"encoder": rec.encoder, "steps": rec.steps},
                },
                indent=2,
            )
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
