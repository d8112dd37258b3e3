"""Encoding throughput: the naive loop versus the radsearch pipeline, same run, same images.

naive:    for each image: PIL decode -> resize/normalise -> batches of 32 -> eager
          torch forward (the plain ``Encoder.encode``), all in this one process.
pipeline: ``radsearch.embed.embed_refs`` - decoding/resizing in worker processes
          overlapping inference, the ``auto`` runtime (ONNX Runtime when faithful and
          faster, else channels-last torch), inference_mode, threads = usable cores,
          resumable shards written as in production.

Images: a fixed, deterministic subset of RadBench (every n-th row of radbench.csv, so
all seven datasets appear), 1,000 by default; without RadBench (or with ``--synthetic``)
the same number of generated 512x512 JPEGs, so the script runs on the plain install
(``pip install "torch==2.13.0" && pip install -e ".[dicom]"``) anywhere. Prints images/s
of the naive loop and of the pipeline for each ``--runtime`` (default ``auto,torch,int8``:
what the plain install gives, ONNX Runtime when faithful, the eager fallback, and the
int8 variant), the ratios, and the cosine between each pipeline's vectors and the naive ones (fp32
runtimes: >= 0.999; ``int8``, the ``<model>-int8`` variant of
``radsearch.encoders.quantize``: its own vectors, within about 0.99; its P@1 parity
with fp32 on RadBench follows, from ``benchmarks/int8_parity.py``: seconds once its
vectors are cached, minutes the first time; ``--no-parity`` skips it).

    python benchmarks/encode.py [--limit 1000] [--model efficientnet-lite0]
                                [--runtime auto,torch,int8] [--synthetic] [--no-parity]
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


def synthetic(limit: int, folder: Path):
    """``limit`` deterministic radiograph-like JPEGs (smooth anatomy-like shapes + noise)."""
    from PIL import Image

    from radsearch.io.sources import iter_source

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512] / 512.0
    for i in range(limit):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = (
            img + 0.3 * np.sin(2 * np.pi * (i % 7 + 1) * xx) + 0.1 * rng.standard_normal(img.shape)
        )
        img = (255 * (img - img.min()) / (np.ptp(img) + 1e-9)).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return list(iter_source(folder))


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
    from radsearch.encoders import create_encoder

    if runtime == "int8":
        return int8_pipeline(refs, model, batch)
    return _timed_embed(refs, create_encoder(model), runtime, batch)


def _timed_embed(refs, enc, runtime, batch, before=None) -> tuple[float, np.ndarray, dict]:
    from radsearch.embed import embed_refs

    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()  # includes the runtime check / ONNX export
        if before:
            before(enc)
        res = embed_refs(refs, enc, work, batch_size=batch, progress=False, runtime=runtime)
        dt = time.perf_counter() - t0
    return len(refs) / dt, res.vectors, getattr(enc, "runtime_info", {})


def int8_pipeline(refs, model: str, batch: int) -> tuple[float, np.ndarray, dict]:
    """The same pipeline with ``<model>-int8``. Its one-off calibration (export, 128
    images, quantisation; once per index, then cached) is timed apart; the timed run
    starts from the quantised model as an index holds it, with the load-time
    faithfulness check inside the timing."""
    from radsearch.encoders import create_encoder
    from radsearch.encoders.quantize import cache_dir, ensure_int8, install_int8

    name = model if model.endswith("-int8") else f"{model}-int8"
    first = create_encoder(name)
    cached = set(cache_dir().glob("*.onnx"))
    t0 = time.perf_counter()
    ensure_int8(first, refs)
    how = "cache hit" if set(cache_dir().glob("*.onnx")) <= cached else "quantised now"
    print(f"int8 calibration (once per index; {how}): {time.perf_counter() - t0:.1f} s")
    model_bytes, record = first.int8_model, first.int8_record

    def load(enc):
        install_int8(enc, model_bytes, record)

    return _timed_embed(refs, create_encoder(name), "auto", batch, before=load)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=1000, help="images (fixed subset)")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument(
        "--runtime",
        default="auto,torch,int8",
        help="pipeline runtimes, comma-separated (int8: the <model>-int8 variant)",
    )
    ap.add_argument("--synthetic", action="store_true", help="generated images, not RadBench")
    ap.add_argument(
        "--no-parity",
        action="store_true",
        help="skip the int8 P@1 parity (first time: embeds all of RadBench, minutes)",
    )
    args = ap.parse_args(argv)
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    bad = [r for r in runtimes if r not in ("auto", "torch", "onnx", "int8")]
    if bad:
        print(f"--runtime: unknown {bad}; choose from auto, torch, onnx, int8", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic or not (RADBENCH / "radbench.csv").exists():
            refs, what = synthetic(args.limit, Path(tmp)), "generated 512x512 JPEG images"
        else:
            refs, what = subset(args.limit), "RadBench images"
        load = os.getloadavg()[0]
        print(f"{len(refs)} {what}, {args.model}, {os.cpu_count()} cores, load avg {load:.1f}")
        r_naive, v_naive = naive(refs, args.model)
        print(f"naive loop:        {r_naive:7.1f} images/s")
        for rt in runtimes:
            r_pipe, v_pipe, info = pipeline(refs, args.model, rt)
            cos = (v_naive * v_pipe).sum(axis=1)
            print(
                f"pipeline ({rt:5s}):  {r_pipe:7.1f} images/s  {r_pipe / r_naive:5.2f}x naive  "
                f"cosine to naive min {cos.min():.6f} mean {cos.mean():.6f}  (runtime {info})"
            )
    print(f"load avg now {os.getloadavg()[0]:.1f} (machine shared: figures vary with contention)")
    if "int8" in runtimes and not args.no_parity and (RADBENCH / "radbench.csv").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from int8_parity import main as int8_parity

        print("int8 P@1 parity with fp32 (benchmarks/int8_parity.py):")
        int8_parity(["--model", f"{args.model.removesuffix('-int8')}-int8"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
