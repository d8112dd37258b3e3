"""The FAISS vector store: one ``vectors.faiss`` file beside the index's embeddings.

Row ``i`` of the FAISS index is row ``i`` of ``items.parquet`` and ``embeddings.npy``;
removal and re-fitting rebuild from the stored embeddings, so the FAISS file is always
derivable and never the only copy of a vector.

``spec`` is the manifest's ``store`` dict itself (shared, not copied): what a build
learns (the concrete structure ``auto`` chose under ``built``, the tuned ``nprobe`` /
``ef_search``, ``recall_at_10``) is saved with the manifest. See ``radsearch.index.ann``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from radsearch.index.ann import SearchKnobs

FAISS_FILE = "vectors.faiss"
# Filters allowing at most this many rows are answered by an exact scan of those rows.
EXACT_FILTER_ROWS = 4096


class FaissStore(SearchKnobs):
    """Exact inner-product search by default; ``spec["type"]`` may name an ANN type."""

    kind = "faiss"

    def __init__(self, dim: int, spec: dict | None = None):
        self.dim = dim
        self.spec = spec if spec is not None else {"type": "flat"}
        self.spec.setdefault("type", "flat")
        self.index = None
        self.overrides: dict = {}
        self._direct_map = False

    @property
    def exact(self) -> bool:
        return self.spec.get("type", "flat") == "flat"

    # -- building -------------------------------------------------------------------
    def build(self, vectors: np.ndarray) -> None:
        """(Re)build from all vectors, training where the index type needs it."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._direct_map = False
        if self.exact:
            index = faiss.IndexFlatIP(self.dim)
            if len(vectors):
                index.add(vectors)
            self.index = index
            return
        from radsearch.index import ann

        t0 = time.perf_counter()
        self.spec["built"] = ann.resolve(self.spec, len(vectors), self.dim)
        index = ann.new_index(self.dim, self.spec, vectors)
        self.spec["train_size"] = ann.train(index, vectors)
        if len(vectors):
            index.add(vectors)
        self.index = index
        self.spec["built"]["count"] = int(len(vectors))
        ann.calibrate(self, vectors)
        self.spec["build_seconds"] = round(time.perf_counter() - t0, 3)
        if self.spec.get("verbose"):
            print(self.describe(), file=sys.stderr)

    def add(self, vectors: np.ndarray) -> None:
        if self.index is None or self.index.ntotal == 0:
            self.build(vectors)
            return
        self._direct_map = False
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def describe(self) -> str:
        s = self.spec
        built = s.get("built", {"type": s.get("type", "flat")})
        knobs = ", ".join(f"{k}={s[k]}" for k in ("nprobe", "ef_search") if k in s)
        rec = s.get("recall_at_10")
        tail = (
            f"; recall@10 vs exact {rec:.4f} on {s['recall_queries']} held-out queries"
            if rec is not None
            else ""
        )
        scan = "exact" if built["type"] == "flat" else "exhaustive scan"
        return f"index {built['type']} ({knobs or scan}){tail}"

    # -- querying -------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None):
        """Top-``k`` (scores, rows); ``rows`` restricts the search to those row numbers.

        ANN types search with a FAISS ID selector; a filter that leaves few rows, or
        one the ANN structure cannot fill ``k`` from, is answered exactly over those rows.
        """
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal))
        if rows is not None and not self.exact and len(rows) <= EXACT_FILTER_ROWS:
            return self._scan_rows(queries, k, np.asarray(rows, np.int64))
        sel = None
        if rows is not None:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
            self._keep_alive = sel  # the selector must outlive the search call
        params = self._search_params(sel)
        if params is None:
            scores, found = self.index.search(queries, k)
        else:
            scores, found = self.index.search(queries, k, params=params)
        if rows is not None and not self.exact:
            want = min(k, len(rows))
            short = np.flatnonzero((found >= 0).sum(axis=1) < want)
            if len(short):
                s2, f2 = self._scan_rows(queries[short], k, np.asarray(rows, np.int64))
                scores[short], found[short] = s2, f2
        return scores, found

    def _scan_rows(self, queries: np.ndarray, k: int, rows: np.ndarray):
        """Exact top-k over the (reconstructed) vectors of ``rows``."""
        vecs = self.reconstruct(rows)
        sims = queries @ vecs.T
        kk = min(k, len(rows))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        scores = np.full((len(queries), k), -np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        scores[:, :kk] = np.take_along_axis(sims, top, axis=1)
        found[:, :kk] = rows[top]
        return scores, found

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of ``rows`` (decoded: approximate for compressed codes)."""
        import faiss

        rows = np.asarray(rows, np.int64)
        if hasattr(self.index, "make_direct_map") and not self._direct_map:
            faiss.extract_index_ivf(self.index).make_direct_map()
            self._direct_map = True
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(rows)

    def _search_params(self, sel=None):
        if self.exact:
            if sel is None:
                return None
            import faiss

            p = faiss.SearchParameters()
            p.sel = sel
            return p
        from radsearch.index import ann

        return ann.search_params(self.index, {**self.spec, **self.overrides}, sel)

    # -- persistence ----------------------------------------------------------------
    def save(self, folder: Path) -> list[str]:
        import faiss

        faiss.write_index(self.index, str(Path(folder) / FAISS_FILE))
        return [FAISS_FILE]

    def load(self, folder: Path, mmap: bool = False) -> None:
        import faiss

        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.index = faiss.read_index(str(Path(folder) / FAISS_FILE), flags)
        self._direct_map = False
