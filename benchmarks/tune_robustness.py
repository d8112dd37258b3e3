"""Does tuning on a small validation split hurt the test split?

The check of issue 13: ``radsearch tune``'s search with the default objective, run on
300 sampled RadBench val queries (5 seeds; train rows = index), must never return a
recipe that lowers test P@1 micro by more than 0.01 against no recipe. Prints each
seed's recipe and its test figures next to no recipe (and, with ``--objectives robust
p1-macro``, the older objective on the same samples). It is the search ``tune`` runs
(:func:`radsearch.selection.greedy_search` over ``tune.GRIDS``), with each fitted step
fitted once on the index and shared by the seeds.

    python benchmarks/tune_robustness.py [--encoder efficientnet-lite0] [--grid default]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radbench_vectors import CACHE, CSV, LITE0, load_table, load_vectors  # noqa: E402

from radsearch.recipe import Recipe  # noqa: E402
from radsearch.selection import DEFAULT_OBJECTIVE, RecipeTrials, get_objective, greedy_search  # noqa: E402
from radsearch.tune import GRIDS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--grid", default="default", choices=sorted(GRIDS))
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--objectives", nargs="+", default=[DEFAULT_OBJECTIVE])
    ap.add_argument("--tolerance", type=float, default=0.01)
    args = ap.parse_args()

    t0 = time.time()
    table = load_table(CSV)
    vec = load_vectors(table, CACHE, LITE0)[args.encoder]
    split, label, group = table["split"], table["label"].astype(str), table["group_id"]
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    val = np.flatnonzero(split == "val")
    index = RecipeTrials(vec[tr], label[tr])
    test = index.queries(vec[te], label[te])
    none = test({}).summary()
    print(f"{args.encoder}: index {len(tr)} train rows; test {len(te)} queries; grid {args.grid}")
    print(
        f"no recipe on test: P@1 micro {none['p@1_micro']:.4f} macro {none['p@1_macro']:.4f}"
        f" P@10 micro {none['p@10_micro']:.4f}"
    )
    head = f"{'seed':>4} {'objective':<9} {'recipe':<58} {'test dP@1 mi':>12} {'dP@1 ma':>8} {'dP@10 mi':>8}"
    print(head)
    worst = {o: 0.0 for o in args.objectives}
    for seed in range(args.seeds):
        pick = np.sort(np.random.default_rng(seed).choice(val, args.queries, replace=False))
        tuning = index.queries(vec[pick], label[pick], group[pick])
        for name in args.objectives:
            steps, _, accepted, _ = greedy_search(tuning, GRIDS[args.grid], get_objective(name))
            got = test(steps).summary()
            d = {m: got[m] - none[m] for m in got}
            worst[name] = min(worst[name], d["p@1_micro"])
            conf = " ".join(
                f"{a.step}@{a.decision.confidence:.2f}" for a in accepted if a.decision.confidence
            )
            desc = Recipe(steps).describe() + (f" [{conf}]" if conf else "")
            print(
                f"{seed:>4} {name:<9} {desc[:58]:<58} {d['p@1_micro']:>+12.4f} "
                f"{d['p@1_macro']:>+8.4f} {d['p@10_micro']:>+8.4f}",
                flush=True,
            )
    for name, w in worst.items():
        ok = w >= -args.tolerance
        print(
            f"check ({name}): largest test P@1 micro drop against no recipe {w:+.4f} "
            f"(bar -{args.tolerance}): {'PASS' if ok else 'FAIL'}"
        )
    print(f"{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
