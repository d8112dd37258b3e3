"""Approximate FAISS index types, the ``auto`` choice, training and build-time recall.

Index types (all inner product on L2-normalised vectors):

======================  ===========================================  ============
type                    FAISS structure                              bytes/vector
======================  ===========================================  ============
``flat``                ``IndexFlatIP`` (exact)                      4 d
``flat-fp16/-sq8``      ``IndexScalarQuantizer`` (exact scan)        2 d / d
``hnsw``                ``IndexHNSWFlat`` (M=32)                     4 d + ~8 M
``hnsw-fp16/-sq8``      ``IndexHNSWSQ``                              2 d / d + ~8 M
``ivf-flat``            ``IndexIVFFlat`` (nlist ~ sqrt n)          4 d + 8
``ivf-fp16/-sq8``       ``IndexIVFScalarQuantizer``                  2 d / d + 8
``ivf-pq``              ``IndexIVFPQ`` (m bytes per code)            m + 8
======================  ===========================================  ============

``auto`` chooses by collection size, dimension and a memory budget, in the spirit of
autofaiss: exact search while it is cheap, HNSW for medium collections, IVF with the
least compression that fits the budget beyond that. Training uses a random sample.

After building, ``calibrate`` holds out query rows (not used for training), measures
recall@10 against exact search (the query's own row excluded from both lists) and, when
no ``nprobe``/``ef_search`` was given, picks the smallest one reaching
``target_recall`` (0.97: held-out database rows are a little easier than fresh queries). The figures land in the store spec, i.e. in
``manifest["store"]``: ``recall_at_10``, ``recall_queries``, ``recall_seed``.
"""

from __future__ import annotations

import re

import numpy as np

from radsearch.errors import RadsearchError


class SearchKnobs:
    """``set_search_params`` for every vector store: query-time ``nprobe`` /
    ``ef_search`` kept in ``self.overrides`` (this process only; the manifest keeps
    the tuned values)."""

    overrides: dict

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        if nprobe:
            self.overrides["nprobe"] = int(nprobe)
        if ef_search:
            self.overrides["ef_search"] = int(ef_search)


TYPES = (
    "auto",
    "flat",
    "flat-fp16",
    "flat-sq8",
    "hnsw",
    "hnsw-fp16",
    "hnsw-sq8",
    "ivf-flat",
    "ivf-fp16",
    "ivf-sq8",
    "ivf-pq",
)
DEFAULT_BUDGET = 2 * 1024**3
DEFAULT_TARGET = 0.97  # on held-out database rows; fresh queries land a little lower
HNSW_M = 32
RECALL_QUERIES = 500
RECALL_SEED = 1234
NPROBE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PQ_M = (128, 64, 48, 32, 24, 16, 8)


def parse_bytes(text) -> int:
    """``"1G"``, ``"512M"``, ``"2.5GB"``, ``"800000000"`` -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise RadsearchError(f"memory budget {text!r}: use bytes or a size like 800M, 1G")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _nlist(n: int) -> int:
    """About sqrt(n) lists (a power of two), at least 39 training points each: k-means
    and list assignment cost grow with nlist, and 2-core machines build too."""
    target = max(1.0, np.sqrt(max(n, 1)))
    nlist = 1 << int(np.floor(np.log2(target)))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return int(min(max(nlist, 1), 65536))


def estimate_bytes(spec: dict, n: int, dim: int) -> int:
    """Resident size of the built index (vectors, codes, graph links, ids, centroids)."""
    t = spec["type"]
    code = {"flat": 4 * dim, "fp16": 2 * dim, "sq8": dim}
    if t.startswith("flat"):
        return n * code[t.split("-", 1)[1] if "-" in t else "flat"]
    if t.startswith("hnsw"):
        m = spec.get("M", HNSW_M)
        return int(n * (code[t.split("-", 1)[1] if "-" in t else "flat"] + 8 * m * 1.05))
    nlist = spec.get("nlist", _nlist(n))
    cent = 4 * dim * nlist
    if t == "ivf-pq":
        m = spec.get("m", 64)
        return n * (m + 8) + cent + 4 * dim * 256
    return n * (code[t.split("-", 1)[1]] + 8) + cent


def _pq_m(dim: int, limit: int | None = None) -> list[int]:
    return [m for m in PQ_M if dim % m == 0 and (limit is None or m <= limit)]


def choose(n: int, dim: int, budget: int = DEFAULT_BUDGET) -> dict:
    """The ``auto`` policy: the most accurate index type that is fast and fits ``budget``."""
    options: list[dict] = []
    if n <= 20_000:
        options.append({"type": "flat"})
    if n <= 200_000:
        options += [{"type": "hnsw", "M": HNSW_M}, {"type": "hnsw-sq8", "M": HNSW_M}]
    nlist = _nlist(n)
    options += [{"type": t, "nlist": nlist} for t in ("ivf-flat", "ivf-fp16", "ivf-sq8")]
    options += [{"type": "ivf-pq", "nlist": nlist, "m": m} for m in _pq_m(dim, dim // 4)]
    for opt in options:
        if estimate_bytes(opt, n, dim) <= budget:
            return opt
    raise RadsearchError(
        f"no index type fits a memory budget of {budget / 1024**2:.0f} MiB for {n} x {dim}-d "
        f"vectors (smallest needs {estimate_bytes(options[-1], n, dim) / 1024**2:.0f} MiB)"
    )


def resolve(spec: dict, n: int, dim: int) -> dict:
    """The concrete structure to build for ``spec`` at size ``n`` (``auto`` resolved)."""
    t = spec.get("type", "flat")
    if t not in TYPES:
        raise RadsearchError(f"index type {t!r} is not supported (choose from {', '.join(TYPES)})")
    if t == "auto":
        out = choose(n, dim, parse_bytes(spec.get("memory_budget", DEFAULT_BUDGET)))
    else:
        out = {"type": t}
        if t.startswith("hnsw"):
            out["M"] = int(spec.get("M", HNSW_M))
        if t.startswith("ivf"):
            out["nlist"] = int(spec.get("nlist") or _nlist(n))
        if t == "ivf-pq":
            m = spec.get("m")
            if m is None:
                m = (_pq_m(dim, dim // 8) or [1])[0]
            if dim % int(m):
                raise RadsearchError(f"ivf-pq: m={m} must divide the dimension {dim}")
            out["m"] = int(m)
    if out["type"].startswith("ivf"):
        out["nlist"] = int(min(out["nlist"], max(1, n // 39) if n else 1) or 1)
    return out


def new_index(dim: int, spec: dict, vectors: np.ndarray):
    """An untrained FAISS index for ``spec`` (``spec["built"]`` when resolved)."""
    import faiss

    built = spec.get("built") or resolve(spec, len(vectors), dim)
    t = built["type"]
    ip = faiss.METRIC_INNER_PRODUCT
    sq = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
    kind = t.split("-", 1)[1] if "-" in t else "flat"
    if t == "flat":
        return faiss.IndexFlatIP(dim)
    if t.startswith("flat-"):
        return faiss.IndexScalarQuantizer(dim, sq[kind], ip)
    if t == "hnsw":
        index = faiss.IndexHNSWFlat(dim, built["M"], ip)
    elif t.startswith("hnsw-"):
        index = faiss.IndexHNSWSQ(dim, sq[kind], built["M"], ip)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        nlist = built["nlist"]
        if t == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
        elif t == "ivf-pq":
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, built["m"], 8, ip)
        else:
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, sq[kind], ip)
        index.cp.niter = 12
        index.cp.seed = RECALL_SEED
        index.quantizer_trains_alone = 0
        quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
        index.own_fields = True
        return index
    index.hnsw.efConstruction = 80
    return index


def holdout_rows(n: int, nq: int | None = None, seed: int = RECALL_SEED) -> np.ndarray:
    """The rows used as build-time recall queries (deterministic for ``n`` and ``seed``)."""
    nq = min(RECALL_QUERIES, max(10, n // 20)) if nq is None else nq
    nq = min(nq, n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:nq]).astype(np.int64)


def train(index, vectors: np.ndarray, seed: int = RECALL_SEED) -> int:
    """Train on a random sample that leaves out the recall queries; returns its size."""
    if index.is_trained:
        return 0
    n = len(vectors)
    held = np.zeros(n, bool)
    held[holdout_rows(n, seed=seed)] = True
    pool = np.flatnonzero(~held) if (~held).sum() >= 256 else np.arange(n)
    nlist = getattr(index, "nlist", 1)
    size = min(len(pool), max(40 * nlist, 20_000))
    rng = np.random.default_rng(seed + 1)
    sample = np.sort(rng.choice(pool, size=size, replace=False))
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    return int(size)


def search_params(index, spec: dict, sel=None):
    """FAISS search parameters for the spec's (or the run-time override's) knobs."""
    import faiss

    built = (spec.get("built") or {}).get("type", spec.get("type", "flat"))
    if built.startswith("ivf"):
        p = faiss.SearchParametersIVF()
        p.nprobe = int(spec.get("nprobe") or 16)
    elif built.startswith("hnsw"):
        p = faiss.SearchParametersHNSW()
        p.efSearch = int(spec.get("ef_search") or 64)
    else:
        if sel is None:
            return None
        p = faiss.SearchParameters()
    if sel is not None:
        p.sel = sel
    return p


def _exclude_self(rows: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(rows), k), -1, np.int64)
    for i, (r, o) in enumerate(zip(rows, own, strict=True)):
        kept = [x for x in r if x != o and x >= 0][:k]
        out[i, : len(kept)] = kept
    return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each exact top-k list found in the approximate top-k list."""
    hits = [len(set(a[:k]) & set(e[:k]) - {-1}) for a, e in zip(approx, exact, strict=True)]
    denom = sum(min(k, int((e[:k] >= 0).sum())) for e in exact)
    return float(sum(hits) / max(denom, 1))


def exact_neighbours(vectors: np.ndarray, rows: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k rows (own row excluded) for the query rows, by brute force."""
    import faiss

    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    _, ex = faiss.knn(xb[rows], xb, min(k + 1, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
    return _exclude_self(ex, rows, k)


def measured_recall(store, vectors: np.ndarray, rows: np.ndarray, exact: np.ndarray, k=10) -> float:
    q = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    _, got = store.search(q, min(k + 1, store.ntotal))
    return recall_at_k(_exclude_self(got, rows, k), exact, k)


def calibrate(store, vectors: np.ndarray, *, seed: int = RECALL_SEED) -> dict:
    """Measure (and where free, tune) recall@10 vs exact on held-out rows; updates spec."""
    spec = store.spec
    n = len(vectors)
    if n < 12:
        return spec
    rows = holdout_rows(n, seed=seed)
    built = spec["built"]["type"]
    if built == "flat":  # exact by construction
        spec.update(recall_at_10=1.0, recall_queries=int(len(rows)), recall_seed=int(seed))
        return spec
    exact = exact_neighbours(vectors, rows, 10)
    target = float(spec.get("target_recall", DEFAULT_TARGET))
    knob = (
        "nprobe" if built.startswith("ivf") else "ef_search" if built.startswith("hnsw") else None
    )
    if knob and (knob not in spec or spec.get("tuned")):
        spec["tuned"] = True
        steps = NPROBE_STEPS if knob == "nprobe" else EF_STEPS
        if knob == "nprobe":
            steps = [s for s in steps if s <= spec["built"]["nlist"]] or [1]
        best = -1.0
        for value in steps:
            spec[knob] = int(value)
            recall = measured_recall(store, vectors, rows, exact)
            if recall >= target or recall < best + 0.002:  # reached, or a plateau
                break
            best = recall
    recall = measured_recall(store, vectors, rows, exact)
    spec["recall_at_10"] = round(float(recall), 4)
    spec["recall_queries"] = int(len(rows))
    spec["recall_seed"] = int(seed)
    return spec
