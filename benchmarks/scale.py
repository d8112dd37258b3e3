"""ANN index figures at paper scale: build time, bytes/vector, resident memory, p50/p99
single-query latency, batch queries/s and recall@10 against exact search, per index type.

Data: synthetic *clustered* 512-d vectors, not uniform noise - a mixture of Gaussians
with label structure: 100 labels, each with 10 sub-clusters around the label's centre;
each sub-cluster has its own 24-d principal subspace plus small isotropic noise (real
embeddings have low intrinsic dimension), L2-normalised like encoder outputs. Queries
are 1,000 (``--queries``) fresh draws from the same mixture (not in the database); ground truth is
exact inner-product search.

Each index is built through ``FaissStore`` (the product path: sample training,
build-time recall calibration, tuned nprobe/efSearch), saved, then *loaded in a fresh
process* that measures resident memory (VmRSS after load and queries, and its growth
over a bare ``import faiss`` process) and the query figures.

    python benchmarks/scale.py --n 100000
    python benchmarks/scale.py --n 1600000 --types flat,ivf-sq8,ivf-pq,auto --budget 1G

Targets at 1.6M on 2 cores: p50 < 5 ms, recall@10 >= 0.95, index <= 1 GB RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 512
N_LABELS, SUB, RANK = 100, 10, 24
DEFAULT_TYPES = "flat,hnsw,hnsw-sq8,ivf-flat,ivf-sq8,ivf-pq,auto"


def mixture(seed: int = 0, dim: int = DIM):
    rng = np.random.default_rng(seed)
    label_c = rng.standard_normal((N_LABELS, dim)).astype(np.float32) / np.sqrt(dim)
    sub_c = np.repeat(label_c, SUB, axis=0) + 0.8 * rng.standard_normal(
        (N_LABELS * SUB, dim)
    ).astype(np.float32) / np.sqrt(dim)
    basis = rng.standard_normal((N_LABELS * SUB, RANK, dim)).astype(np.float32) / np.sqrt(dim)
    return sub_c, basis


def sample(n: int, seed: int, dim: int = DIM, chunk: int = 200_000):
    """``n`` normalised vectors and their labels from the fixed mixture."""
    centres, basis = mixture(0, dim)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    labels = np.empty(n, np.int32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        c = rng.integers(0, len(centres), m)
        z = rng.standard_normal((m, RANK)).astype(np.float32) * 0.5
        x = centres[c]
        order = np.argsort(c, kind="stable")
        bounds = np.searchsorted(c[order], np.arange(len(centres) + 1))
        for k in range(len(centres)):  # grouped by sub-cluster: no n x r x d temporary
            idx = order[bounds[k] : bounds[k + 1]]
            if len(idx):
                x[idx] += z[idx] @ basis[k]
        x += 0.12 * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + m], labels[s : s + m] = x, c // SUB
    return out, labels


def rss_mb() -> tuple[float, float]:
    status = Path("/proc/self/status").read_text()
    get = {ln.split(":")[0]: ln.split()[1:2] for ln in status.splitlines() if ":" in ln}
    return int(get["VmRSS"][0]) / 1024, int(get["VmHWM"][0]) / 1024


def measure(folder: str) -> dict:
    """Runs in a fresh process: load the saved index and time queries."""
    import faiss

    from radsearch.index.ann import recall_at_k
    from radsearch.index.faiss_store import FaissStore

    base, _ = rss_mb()
    folder = Path(folder)
    spec = json.loads((folder / "spec.json").read_text())
    with np.load(folder.parent / "queries.npz") as z:
        q, gt = z["q"], z["gt"]
    store = FaissStore(DIM, spec)
    store.load(folder)
    loaded, _ = rss_mb()
    nq = len(q) if spec["type"] != "flat" else min(len(q), 100)
    lat = []
    found = np.zeros((len(q), 10), np.int64)
    store.search(q[:1], 10)  # warm-up
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query, one core: no OpenMP hand-offs
    for i in range(nq):
        t0 = time.perf_counter()
        _, r = store.search(q[i : i + 1], 10)
        lat.append(time.perf_counter() - t0)
        found[i] = r[0]
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    _, rb = store.search(q, 10)
    batch_qps = len(q) / (time.perf_counter() - t0)
    now, peak = rss_mb()
    return {
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p99_ms": 1000 * float(np.percentile(lat, 99)),
        "batch_qps": batch_qps,
        "recall_at_10": recall_at_k(rb, gt, 10),
        "rss_mb": now,
        "rss_peak_mb": peak,
        "index_rss_mb": loaded - base,
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def run(n: int, types: list[str], budget: str, work: Path, queries: int = 1000) -> list[dict]:
    import faiss

    from radsearch.index.faiss_store import FAISS_FILE, FaissStore

    t0 = time.perf_counter()
    x, _ = sample(n, seed=1)
    q, _ = sample(queries, seed=2)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, gt = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    print(
        f"n={n:,} d={DIM}: data {gen:.1f}s, exact ground truth {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    np.savez(work / "queries.npz", q=q, gt=gt)
    rows = []
    for t in types:
        spec = {"kind": "faiss", "type": t}
        if t == "auto":
            spec["memory_budget"] = budget
        store = FaissStore(DIM, spec)
        t0 = time.perf_counter()
        store.build(x)
        build_s = time.perf_counter() - t0
        folder = work / t
        folder.mkdir(exist_ok=True)
        store.save(folder)
        (folder / "spec.json").write_text(json.dumps(spec))
        size = (folder / FAISS_FILE).stat().st_size
        del store
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder)],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise RuntimeError(f"measuring {t} failed:\n{out.stderr[-3000:]}")
        m = json.loads(out.stdout.strip().splitlines()[-1])
        built = spec.get("built", {"type": t})
        knob = {k: spec[k] for k in ("nprobe", "ef_search") if k in spec}
        row = {
            "n": n,
            "type": t,
            "built": built,
            "knobs": knob,
            "build_s": build_s,
            "bytes_per_vector": size / n,
            "build_recall_at_10": spec.get("recall_at_10"),
            **m,
        }
        rows.append(row)
        print(
            f"{t:>9} ({built['type']}{', ' + ', '.join(f'{k}={v}' for k, v in knob.items()) if knob else ''}): "
            f"build {build_s:7.1f}s  {size / n:7.1f} B/vec  RSS {m['rss_mb']:6.0f} MB "
            f"(index {m['index_rss_mb']:6.0f} MB)  p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms  "
            f"batch {m['batch_qps']:8.0f} q/s  recall@10 {m['recall_at_10']:.4f} "
            f"(build-time {spec.get('recall_at_10')})",
            flush=True,
        )
        (folder / FAISS_FILE).unlink()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--types", default=DEFAULT_TYPES)
    ap.add_argument("--budget", default="1G", help="memory budget for auto")
    ap.add_argument(
        "--queries", type=int, default=1000, help="fresh queries (ground truth is exact)"
    )
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    print(
        f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f} (shared machine: "
        "latencies include contention)"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="radsearch-scale-") as tmp:
        for n in args.n:
            work = Path(tmp) / str(n)
            work.mkdir()
            rows += run(n, args.types.split(","), args.budget, work, args.queries)
    print(f"load avg at end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
