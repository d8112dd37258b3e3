"""RadBench test P@1 (micro and macro) of int8 vectors against fp32, in one run.

Index = RadBench train rows, queries = test rows, exact inner-product search over the
whole pooled index, label column ``label``: the reference paper's modified P@1
(``radsearch.evaluate.protocol``), overall and per dataset. fp32 vectors: the tests'
cached ``efficientnet-lite0`` embedding (``$RADSEARCH_TEST_CACHE``); int8 vectors:
``efficientnet-lite0-int8`` calibrated on the train rows (the index images), as
``radsearch index`` would calibrate it on them, embedded once through the production
pipeline and cached under ``--cache`` (default ``/work/cache/int8``; minutes on two
cores). Also prints the cosine between the int8 and fp32 vector of each image.
Pass: |int8 - fp32| <= 0.005 on both micro and macro.

    python benchmarks/int8_parity.py [--model efficientnet-lite0-int8] [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RADBENCH = REPO.parent / "shared" / "radbench"
FP32_CACHE = Path(os.environ.get("RADSEARCH_TEST_CACHE", REPO / ".cache" / "tests"))
TOLERANCE = 0.005


def radbench_refs():
    from radsearch.io.sources import iter_source

    return list(iter_source(RADBENCH / "radbench.csv"))


def int8_vectors(refs, model: str, cache: Path) -> tuple[np.ndarray, dict]:
    """Vectors of every row (in ``refs`` order), calibrated on the train rows."""
    from radsearch.embed import embed_refs
    from radsearch.encoders import create_encoder
    from radsearch.encoders.quantize import ensure_int8

    encoder = create_encoder(model)
    ensure_int8(encoder, [r for r in refs if r.metadata.get("split") == "train"])
    info = encoder.runtime_info
    digest = hashlib.sha256((RADBENCH / "radbench.csv").read_bytes()).hexdigest()[:12]
    tag = f"radbench-{digest}-{model}-{encoder.config.hash}-{info['calibration']['digest']}"
    npz = cache / f"{tag}.npz"
    if not npz.exists():
        res = embed_refs(refs, encoder, cache / f"{tag}.work", batch_size=64)
        if res.failures:
            raise SystemExit(f"{len(res.failures)} images failed, e.g. {res.failures[0]}")
        np.savez(npz, emb=res.vectors, filepath=np.asarray([r.id for r in res.refs]))
    with np.load(npz) as z:
        pos = {p: i for i, p in enumerate(z["filepath"].tolist())}
        return np.asarray(z["emb"], np.float32)[[pos[r.id] for r in refs]], info


def fp32_vectors(refs) -> np.ndarray:
    npz = next(FP32_CACHE.glob("radbench-*-lite0-*.npz"), None)
    if npz is None:
        raise SystemExit(f"no cached fp32 Lite0 vectors in {FP32_CACHE} (run the RadBench tests)")
    with np.load(npz) as z:
        pos = {p: i for i, p in enumerate(z["filepath"].tolist())}
        return np.asarray(z["emb"], np.float32)[[pos[r.id] for r in refs]]


def p_at_1(vectors: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray):
    """``(micro, macro)`` modified P@1 of test queries against the train index."""
    import faiss

    from radsearch.evaluate.protocol import encode_labels, modified_precision

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors[train]))
    _, nb = index.search(np.ascontiguousarray(vectors[test]), 1)
    (q, i), vocab = encode_labels(labels[test], labels[train])
    p = modified_precision(nb, q, i, len(vocab), max_k=1)
    return float(p.micro[0]), float(p.macro[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0-int8")
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/int8"))
    args = ap.parse_args(argv)
    if not (RADBENCH / "radbench.csv").exists():
        print(f"RadBench not found at {RADBENCH}", file=sys.stderr)
        return 1
    args.cache.mkdir(parents=True, exist_ok=True)
    refs = radbench_refs()
    v8, info = int8_vectors(refs, args.model, args.cache)
    v32 = fp32_vectors(refs)
    cos = (v8 * v32).sum(axis=1)
    print(f"{args.model}: runtime {info.get('runtime')}, calibration {info.get('calibration')}")
    print(
        f"cosine int8 vs fp32 over {len(refs)} images: min {cos.min():.4f}  mean {cos.mean():.4f}"
    )
    meta = {k: np.asarray([r.metadata.get(k, "") for r in refs]) for k in ("split", "dataset")}
    labels = np.asarray([r.metadata.get("label", "") for r in refs])
    train = meta["split"] == "train"
    ok = True
    for split in ("val", "test"):  # val: where configurations are chosen; test: reported
        print(
            f"{split + ' P@1':24s} {'fp32 micro':>10s} {'int8 micro':>10s} "
            f"{'fp32 macro':>10s} {'int8 macro':>10s}"
        )
        for ds in ["all", *sorted(set(meta["dataset"]))]:
            sel = np.ones(len(refs), bool) if ds == "all" else meta["dataset"] == ds
            queries = (meta["split"] == split) & sel
            f = p_at_1(v32, labels, train & sel, queries)
            q = p_at_1(v8, labels, train & sel, queries)
            print(
                f"{ds:24s} {f[0]:10.4f} {q[0]:10.4f} {f[1]:10.4f} {q[1]:10.4f}"
                f"   delta {q[0] - f[0]:+.4f} / {q[1] - f[1]:+.4f}"
            )
            if ds == "all" and split == "test":
                ok = abs(q[0] - f[0]) <= TOLERANCE and abs(q[1] - f[1]) <= TOLERANCE
    print(f"test parity within {TOLERANCE} (pooled, micro and macro): {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
