"""The FAISS vector store: one ``vectors.faiss`` file beside the index's embeddings.

Row ``i`` of the FAISS index is row ``i`` of ``items.parquet`` and ``embeddings.npy``;
removal and re-fitting rebuild from the stored embeddings, so the FAISS file is always
derivable and never the only copy of a vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FAISS_FILE = "vectors.faiss"


class FaissStore:
    """Exact inner-product search by default; ``spec`` may name other index types."""

    kind = "faiss"

    def __init__(self, dim: int, spec: dict | None = None):
        self.dim = dim
        self.spec = dict(spec or {"type": "flat"})
        self.index = None

    # -- building -------------------------------------------------------------------
    def build(self, vectors: np.ndarray) -> None:
        """(Re)build from all vectors, training where the index type needs it."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = self._new_index(vectors)
        if not index.is_trained:
            index.train(vectors)
        if len(vectors):
            index.add(vectors)
        self.index = index

    def add(self, vectors: np.ndarray) -> None:
        if self.index is None:
            self.build(vectors)
            return
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def _new_index(self, vectors: np.ndarray):
        import faiss

        kind = self.spec.get("type", "flat")
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        from radsearch.index import ann

        return ann.new_index(self.dim, self.spec, vectors)

    # -- querying -------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None):
        """Top-``k`` (scores, rows); ``rows`` restricts the search to those row numbers."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal))
        params = self._search_params()
        if rows is not None:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
            params = params or faiss.SearchParameters()
            params.sel = sel
            self._keep_alive = sel  # the selector must outlive the search call
        if params is None:
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=params)

    def _search_params(self):
        if self.spec.get("type", "flat") == "flat":
            return None
        from radsearch.index import ann

        return ann.search_params(self.index, self.spec)

    # -- persistence ----------------------------------------------------------------
    def save(self, folder: Path) -> list[str]:
        import faiss

        faiss.write_index(self.index, str(Path(folder) / FAISS_FILE))
        return [FAISS_FILE]

    def load(self, folder: Path) -> None:
        import faiss

        self.index = faiss.read_index(str(Path(folder) / FAISS_FILE))
