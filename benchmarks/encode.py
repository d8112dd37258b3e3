"""Encoding throughput: the naive loop versus the radsearch pipeline, same run, same images.

naive:    for each image: PIL decode -> resize/normalise -> batches of 32 -> eager
          torch forward (the plain ``Encoder.encode``), all in this one process.
pipeline: ``radsearch.embed.embed_refs`` - decoding/resizing in worker processes
          overlapping inference, the ``auto`` runtime (ONNX Runtime when faithful and
          faster, else channels-last torch), inference_mode, threads = usable cores,
          resumable shards written as in production.

Images: a fixed, deterministic subset of RadBench (every n-th row of radbench.csv, so
all seven datasets appear), 1,000 by default. Prints images/s of both, the ratio, and
the minimum cosine between the two runs' vectors (must be >= 0.999).

    python benchmarks/encode.py [--limit 1000] [--model efficientnet-lite0] [--runtime auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RADBENCH = REPO.parent / "shared" / "radbench"


def subset(limit: int):
    from radsearch.io.sources import iter_source

    refs = list(iter_source(RADBENCH / "radbench.csv"))
    step = max(1, len(refs) // limit)
    return refs[::step][:limit]


def naive(refs, model: str, batch: int = 32) -> tuple[float, np.ndarray]:
    import torch

    from radsearch.encoders import create_encoder
    from radsearch.io.items import load_pixels

    enc = create_encoder(model)
    torch.set_num_threads(os.cpu_count() or 1)
    out, buf = [], []
    t0 = time.perf_counter()
    for r in refs:
        buf.append(enc.preprocess(load_pixels(r)))
        if len(buf) == batch:
            out.append(enc.encode(np.stack(buf)))
            buf = []
    if buf:
        out.append(enc.encode(np.stack(buf)))
    return len(refs) / (time.perf_counter() - t0), np.concatenate(out)


def pipeline(refs, model: str, runtime: str, batch: int = 32) -> tuple[float, np.ndarray, dict]:
    from radsearch.embed import embed_refs
    from radsearch.encoders import create_encoder

    enc = create_encoder(model)
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()  # includes the runtime check / ONNX export
        res = embed_refs(refs, enc, work, batch_size=batch, progress=False, runtime=runtime)
        dt = time.perf_counter() - t0
    return len(refs) / dt, res.vectors, getattr(enc, "runtime_info", {})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=1000, help="images (fixed RadBench subset)")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    args = ap.parse_args(argv)
    if not (RADBENCH / "radbench.csv").exists():
        print(f"RadBench not found at {RADBENCH}", file=sys.stderr)
        return 1
    refs = subset(args.limit)
    load = os.getloadavg()[0]
    print(f"{len(refs)} RadBench images, {args.model}, {os.cpu_count()} cores, load avg {load:.1f}")
    r_naive, v_naive = naive(refs, args.model)
    print(f"naive loop:  {r_naive:7.1f} images/s")
    r_pipe, v_pipe, info = pipeline(refs, args.model, args.runtime)
    print(f"pipeline:    {r_pipe:7.1f} images/s  (runtime {info})")
    cos = float((v_naive * v_pipe).sum(axis=1).min())
    print(f"speed-up:    {r_pipe / r_naive:7.2f}x   min cosine naive vs pipeline {cos:.6f}")
    print(f"load avg now {os.getloadavg()[0]:.1f} (machine shared: figures vary with contention)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
