"""RadBench experiments behind docs/recipes.md (slow: not run by CI).

``embed VIEW``: one forward pass per image with EfficientNet-Lite0/2, storing every
candidate feature block (head/intermediate maps x avg/gem/max/grid pooling, raw, not
normalised) in ``.cache/recipes/<arch>-<view>.npz``; VIEW is ``s<size>`` or
``s<size>f`` (mirrored). Blocks are combined later without re-running the network,
the same way ``EfficientNetLiteFeatures`` combines them (average raw pooled blocks
over views, L2-normalise each, weight, concatenate).

``final``: reproduces the chosen recipe end to end with the product code: builds the
variant encoder's features (from the cache), tunes the recipe on ``val`` queries
against the ``train`` index, then reports ``test``.
"""

from __future__ import annotations

import argparse
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
    size, flip = int(view[1:].rstrip("f")), view.endswith("f")
    base = get_config(args.arch)
    cfg = base.replace(input_size=size)
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
        batch = np.stack([preprocess(load_rgb(RADBENCH / p), cfg) for p in paths[start : start + args.batch]])
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
            np.savez(tmp, filepath=np.asarray(paths[:done]), **{t: c[0] for t, c in zip(ALL_TAPS, chunks, strict=True)})
            os.replace(tmp, part)
    paths = paths[:done]
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, filepath=np.asarray(paths), **{t: np.concatenate(c) for t, c in zip(ALL_TAPS, chunks, strict=True)})
    os.replace(tmp, out)
    part.unlink(missing_ok=True)
    print(f"wrote {out} in {time.time() - t0:.0f}s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("embed")
    p.add_argument("view", help="s224, s224f, s320 ...")
    p.add_argument("--arch", default="efficientnet-lite0")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_embed)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
