"""RadBench experiments behind docs/recipes.md (slow: not run by CI).

``embed VIEW``: one forward pass per image with EfficientNet-Lite0/2, storing every
candidate feature block (head/intermediate maps x avg/gem/max/grid pooling, raw, not
normalised) in ``.cache/recipes/<arch>-<view>.npz``; VIEW is ``s<size>`` or
``s<size>f`` (mirrored), ``s<size>h`` (histogram-equalised). Blocks are combined later without re-running the network,
the same way ``EfficientNetLiteFeatures`` combines them (average raw pooled blocks
over views, L2-normalise each, weight, concatenate).

``final``: reproduces the chosen recipe end to end with the product code: builds the
variant encoder's features (from the cache), tunes the recipe on ``val`` queries
against the ``train`` index, then reports ``test``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RADBENCH = REPO.parent / "shared" / "radbench"
CACHE = REPO / ".cache" / "recipes"

# every candidate block computed in one pass (layer:pooling)
ALL_TAPS = [
    f"{layer}:{pool}"
    for layer in ("head", "b15", "b14", "b10", "b7")
    for pool in ("avg", "gem", "max", "grid2")
] + ["b4:avg", "b4:gem", "head:grid3", "b14:grid3", "b10:grid3", "b10:grid4"]


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def cmd_embed(args) -> int:
    import pandas as pd
    import torch

    from radsearch.encoders import create_encoder, get_config
    from radsearch.encoders.base import preprocess
    from radsearch.encoders.efficientnet import parse_taps

    torch.set_num_threads(args.threads)
    view = args.view
    size, flip, equalize = int(view[1:].rstrip("fh")), "f" in view[1:], "h" in view[1:]
    base = get_config(args.arch)
    # equalisation through the product's own preprocessing (EncoderConfig.contrast)
    cfg = base.replace(input_size=size, contrast="equalize" if equalize else "none")
    enc = create_encoder(base)
    taps = parse_taps(cfg.replace(extra={"taps": ALL_TAPS}))
    df = pd.read_csv(RADBENCH / "radbench.csv")
    out = CACHE / f"{args.arch}-{view}.npz"
    if out.exists():
        print(f"{out} exists")
        return 0
    # a fixed random order with partial checkpoints, so experiments can start on
    # a random subset (all splits and labels in proportion) before the pass ends
    order = np.random.default_rng(0).permutation(len(df))
    paths = df.filepath.to_numpy()[order].tolist()
    part = CACHE / f"{args.arch}-{view}.partial.npz"
    chunks: list[list[np.ndarray]] = [[] for _ in taps]
    done = 0
    if part.exists():
        with np.load(part) as z:
            done = len(z["filepath"])
            for i, t in enumerate(ALL_TAPS):
                chunks[i].append(z[t])
    t0 = time.time()
    for start in range(done, len(paths), args.batch):
        batch = np.stack(
            [preprocess(load_rgb(RADBENCH / p), cfg) for p in paths[start : start + args.batch]]
        )
        x = torch.from_numpy(batch)
        if flip:
            x = x.flip(-1)
        with torch.inference_mode():
            blocks = enc.module.raw(x, taps, [size])
        for i, b in enumerate(blocks):
            chunks[i].append(b.numpy().astype(np.float16))
        done = start + len(batch)
        if done % (args.batch * 10) == 0 or done == len(paths):
            print(f"{view}: {done}/{len(paths)} {time.time() - t0:.0f}s", flush=True)
            chunks = [[np.concatenate(c)] for c in chunks]
            tmp = part.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                filepath=np.asarray(paths[:done]),
                **{t: c[0] for t, c in zip(ALL_TAPS, chunks, strict=True)},
            )
            os.replace(tmp, part)
    paths = paths[:done]
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        filepath=np.asarray(paths),
        **{t: np.concatenate(c) for t, c in zip(ALL_TAPS, chunks, strict=True)},
    )
    os.replace(tmp, out)
    part.unlink(missing_ok=True)
    print(f"wrote {out} in {time.time() - t0:.0f}s")
    return 0


# -- studies on the cached blocks ---------------------------------------------------------
def load_views(arch: str, views: list[str]) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """Cached blocks of each view, restricted to the rows every view has (in CSV order)."""
    data = {}
    for v in views:
        f = CACHE / f"{arch}-{v}.npz"
        if not f.exists():
            f = CACHE / f"{arch}-{v}.partial.npz"
        with np.load(f) as z:
            data[v] = {k: z[k] for k in z.files}
    common = set.intersection(*(set(d["filepath"].tolist()) for d in data.values()))
    import pandas as pd

    order = [p for p in pd.read_csv(RADBENCH / "radbench.csv").filepath if p in common]
    out = {}
    for v, d in data.items():
        pos = {p: i for i, p in enumerate(d["filepath"].tolist())}
        sel = np.asarray([pos[p] for p in order])
        out[v] = {k: d[k][sel].astype(np.float32) for k in d if k != "filepath"}
    return order, out


def features(
    blocks: dict[str, dict[str, np.ndarray]], taps: list[tuple[str, float]], views: list[str]
):
    """What ``EfficientNetLiteFeatures`` computes: raw blocks averaged over views,
    each block L2-normalised and weighted, concatenated, L2-normalised."""
    parts = []
    for tap, w in taps:
        raw = np.mean([blocks[v][tap] for v in views], axis=0)
        parts.append(w * raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12))
    x = np.concatenate(parts, axis=1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def split_rows(order: list[str]):
    import pandas as pd

    df = pd.read_csv(RADBENCH / "radbench.csv").set_index("filepath").loc[order]
    return df, {s: np.flatnonzero(df.split.to_numpy() == s) for s in ("train", "val", "test")}


def evaluate_features(x, df, rows, recipe, query_split="test"):
    from radsearch.evaluate.analyses import scratch_index
    from radsearch.tune import score_recipe

    labels = df.label.to_numpy().astype(object)
    index = scratch_index(x[rows["train"]])
    q = rows[query_split]
    return score_recipe(index, recipe, x[q], labels[q], labels[rows["train"]])


FEATURE_SETS = {
    "head-avg": [("head:avg", 1.0)],
    "head-gem": [("head:gem", 1.0)],
    "head-max": [("head:max", 1.0)],
    "head-grid2": [("head:grid2", 1.0)],
    "b15-avg": [("b15:avg", 1.0)],
    "b14-avg": [("b14:avg", 1.0)],
    "b14-grid2": [("b14:grid2", 1.0)],
    "b10-avg": [("b10:avg", 1.0)],
    "b10-grid2": [("b10:grid2", 1.0)],
    "b10-grid4": [("b10:grid4", 1.0)],
    "b7-avg": [("b7:avg", 1.0)],
    "head-avg+b14-avg": [("head:avg", 1.0), ("b14:avg", 1.0)],
    "head-avg+b10-avg": [("head:avg", 1.0), ("b10:avg", 1.0)],
    "head-gem+b14-gem+b10-gem": [("head:gem", 1.0), ("b14:gem", 1.0), ("b10:gem", 1.0)],
    "head-avg+b14-avg+b10-avg": [("head:avg", 1.0), ("b14:avg", 1.0), ("b10:avg", 1.0)],
    "head-grid2+b14-grid2+b10-grid2": [("head:grid2", 1.0), ("b14:grid2", 1.0), ("b10:grid2", 1.0)],
    "head-avg+b14-grid2+b10-grid2": [("head:avg", 1.0), ("b14:grid2", 1.0), ("b10:grid2", 1.0)],
    "b7-avg+b10-grid2+b14-grid2": [("b7:avg", 1.0), ("b10:grid2", 1.0), ("b14:grid2", 1.0)],
    "b7-avg+b10-avg+b14-grid2": [("b7:avg", 1.0), ("b10:avg", 1.0), ("b14:grid2", 1.0)],
    "b4-avg+b7-avg+b10-avg+b14-grid2": [
        ("b4:avg", 1.0),
        ("b7:avg", 1.0),
        ("b10:avg", 1.0),
        ("b14:grid2", 1.0),
    ],
    "b4-avg+b7-avg+b10-avg+b14-avg": [
        ("b4:avg", 1.0),
        ("b7:avg", 1.0),
        ("b10:avg", 1.0),
        ("b14:avg", 1.0),
    ],
    "b7-avg+b10-avg+b14-avg+head-grid2": [
        ("b7:avg", 1.0),
        ("b10:avg", 1.0),
        ("b14:avg", 1.0),
        ("head:grid2", 1.0),
    ],
    "b10-gem": [("b10:gem", 1.0)],
    "b10-max": [("b10:max", 1.0)],
    "b14-max": [("b14:max", 1.0)],
    "b7-avg+b10-avg+b14-avg": [("b7:avg", 1.0), ("b10:avg", 1.0), ("b14:avg", 1.0)],
    "b10-avg+b14-grid2": [("b10:avg", 1.0), ("b14:grid2", 1.0)],
    "b10-avg+b14-avg+head-gem": [("b10:avg", 1.0), ("b14:avg", 1.0), ("head:gem", 1.0)],
    "b7-avg+b10-avg+b14-grid2+head-max": [
        ("b7:avg", 1.0),
        ("b10:avg", 1.0),
        ("b14:grid2", 1.0),
        ("head:max", 1.0),
    ],
}


def cmd_study(args) -> int:
    """Screen feature sets: plain kNN and a fixed cheap recipe, on val (and test)."""
    from radsearch.recipe import Recipe

    views = args.views.split(",")
    order, blocks = load_views(args.arch, views)
    df, rows = split_rows(order)
    print(
        f"{len(order)} rows ({', '.join(f'{k} {len(v)}' for k, v in rows.items())}), views {views}"
    )
    names = args.sets.split(",") if args.sets else list(FEATURE_SETS)
    probe = Recipe(json.loads(args.recipe)) if args.recipe else None
    for name in names:
        x = features(blocks, FEATURE_SETS[name], views)
        line = f"{name:<34}"
        for split in args.splits.split(","):
            for tag, r in (("plain", None), ("probe", probe)):
                if tag == "probe" and probe is None:
                    continue
                m = evaluate_features(x, df, rows, r, split)
                line += f" {split}/{tag} P@1M {m['p@1_macro']:.3f} P@1m {m['p@1_micro']:.3f} P@10m {m['p@10_micro']:.3f} |"
        print(line, flush=True)
    return 0


def cmd_final(args) -> int:
    """Tune on val (train index), report test, for each feature set; export vectors."""
    from radsearch.tune import tune_recipe

    views = args.views.split(",")
    order, blocks = load_views(args.arch, views)
    df, rows = split_rows(order)
    labels = df.label.to_numpy().astype(object)
    print(
        f"{len(order)} rows ({', '.join(f'{k} {len(v)}' for k, v in rows.items())}), views {views}"
    )
    table = []
    for name in args.sets.split(","):
        x = features(blocks, FEATURE_SETS[name], views)
        npz = CACHE / f"{args.arch}-{name}-{'+'.join(views)}.npz"
        np.savez(npz, emb=x, filepath=np.asarray(order))
        tr, va = rows["train"], rows["val"]
        t0 = time.time()
        log = (lambda m: print(m, flush=True)) if args.verbose else None
        recipe, best, trials = tune_recipe(x[tr], labels[tr], x[va], labels[va], args.grid, log=log)
        plain = evaluate_features(x, df, rows, None, "test")
        tuned = evaluate_features(x, df, rows, recipe, "test")
        out = CACHE / f"recipe-{args.arch}-{name}.json"
        spec = recipe.settings() if recipe else {"version": 1, "steps": {}}
        spec["chosen_on"] = {
            "val_split": "val",
            "index_split": "train",
            "features": name,
            "views": views,
            "val_p@1_macro": best["p@1_macro"],
            "trials": len(trials),
        }
        out.write_text(json.dumps(spec, indent=2))
        for tag, m in (("plain", plain), ("recipe", tuned)):
            row = {
                "features": name,
                "recipe": tag if tag == "plain" else (recipe.describe() if recipe else "none"),
                **{
                    k: round(m[k], 4)
                    for k in ("p@1_macro", "p@1_micro", "p@10_macro", "p@10_micro")
                },
                "knee_p@1": round(
                    np.mean([v for k, v in m["per_label_p@1"].items() if k.startswith("xr_knee")]),
                    4,
                ),
            }
            table.append(row)
            print(json.dumps(row), flush=True)
        print(
            f"  tuned in {time.time() - t0:.0f}s on {len(va)} val queries; wrote {out} and {npz}",
            flush=True,
        )
    (CACHE / f"final-{args.arch}.json").write_text(json.dumps(table, indent=2))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("embed")
    p.add_argument("view", help="s224, s224f, s320 ...")
    p.add_argument("--arch", default="efficientnet-lite0")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("study")
    p.add_argument("--arch", default="efficientnet-lite0")
    p.add_argument("--views", default="s224")
    p.add_argument("--sets", help="comma-separated FEATURE_SETS names (default all)")
    p.add_argument("--splits", default="val")
    p.add_argument("--recipe", help="JSON steps of a fixed probe recipe")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("final")
    p.add_argument("--arch", default="efficientnet-lite0")
    p.add_argument("--views", default="s224")
    p.add_argument("--sets", default="head-avg")
    p.add_argument("--grid", default="default")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_final)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
