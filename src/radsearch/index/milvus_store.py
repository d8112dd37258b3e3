"""Milvus as the vector store: the same interface as ``FaissStore``, vectors in a
Milvus collection (Milvus Lite's local path for one user, ``http://host:port`` for a
shared server), so search, serve and evaluate work unchanged.

Each entity is ``row`` (INT64 primary key = the row of ``items.parquet``), ``vector``
(FLOAT_VECTOR, inner product) and the item's metadata as dynamic fields
(``item_id``, ``source``, ``label``, ``modality``, ...), so other Milvus clients can filter
on them too (``label == "x"``). ``search(q, k, rows)`` narrows to ``rows`` with a
``row in [...]`` filter, or over-fetches and filters for large row sets.

Collections are created with ``consistency_level="Strong"`` (a search sees every
write before it). ``save`` writes ``milvus.json`` (URI, collection, count) into the
index directory. Appends go straight to the collection; ``load`` deletes rows at or
past the committed count (an append whose index commit failed). A rebuild (removal,
recipe refit) writes a new collection generation ``..._gN``; the superseded one is
dropped when the index that no longer references it is next opened (a rebuild whose
commit failed leaves an orphan collection behind, never a wrong index).
Spec keys: ``uri``, ``collection`` (default: ``radsearch_<random>``, fixed at
creation), ``index_type`` (``FLAT`` default; ``HNSW``, ``IVF_FLAT``, ``IVF_SQ8``...),
``nprobe`` / ``ef_search``.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import numpy as np

from radsearch.errors import IndexFormatError, RadsearchError
from radsearch.index.ann import SearchKnobs

MILVUS_FILE = "milvus.json"
INSERT_CHUNK = 2000
EXPR_ROWS = 8192  # row filters up to this size go to Milvus as ``row in [...]``
MAX_TOPK = 16384
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_CLIENTS: dict = {}


def normalise_uri(uri: str) -> str:
    """Server URIs as given; a local Milvus Lite path made absolute."""
    if re.match(r"^[a-z]+://", uri):
        return uri
    return str(Path(uri).expanduser().resolve())


def client_for(uri: str):
    """One ``MilvusClient`` per URI per process (Milvus Lite allows one holder)."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise RadsearchError(
            "the Milvus store needs pymilvus (and milvus-lite for local paths): "
            'pip install "radsearch[scale]"'
        ) from None
    if uri not in _CLIENTS:
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        _CLIENTS[uri] = MilvusClient(uri=uri)
    return _CLIENTS[uri]


def close_client(uri: str) -> None:
    client = _CLIENTS.pop(normalise_uri(uri), None)
    if client is not None:
        client.close()


class MilvusStore(SearchKnobs):
    kind = "milvus"

    def __init__(self, dim: int, spec: dict):
        self.dim = dim
        self.spec = spec
        if not spec.get("uri"):
            raise IndexFormatError(
                "milvus store: no uri (use --store milvus:<path or http://host:port>)"
            )
        spec["uri"] = normalise_uri(spec["uri"])
        spec.setdefault("collection", f"radsearch_{uuid.uuid4().hex[:12]}_g0")
        spec.setdefault("index_type", "FLAT")
        self.overrides: dict = {}
        self._n = 0
        self._owner = None
        self._committed: int | None = None  # rows in the last saved/loaded state
        self._retired: list[str] = []

    # the Index calls this so inserts can carry the rows' metadata
    def bind(self, index) -> None:
        self._owner = index

    @property
    def client(self):
        return client_for(self.spec["uri"])

    @property
    def name(self) -> str:
        return self.spec["collection"]

    @property
    def ntotal(self) -> int:
        return self._n

    # -- building -------------------------------------------------------------------
    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        c = self.client
        if c.has_collection(self.name):
            c.drop_collection(self.name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = c.prepare_index_params()
        itype = self.spec.get("index_type", "FLAT")
        iparams = {"nlist": int(self.spec.get("nlist", 1024))} if itype.startswith("IVF") else {}
        if itype.startswith("HNSW"):
            iparams = {"M": int(self.spec.get("M", 32)), "efConstruction": 128}
        params.add_index("vector", index_type=itype, metric_type="IP", params=iparams)
        c.create_collection(
            self.name, schema=schema, index_params=params, consistency_level="Strong"
        )
        self._n = 0

    def _metadata(self, start: int, count: int) -> list[dict]:
        items = getattr(self._owner, "items", None)
        if items is None or items.num_rows < start + count:
            return [{} for _ in range(count)]
        cols = [c for c in items.column_names if _FIELD.match(c) and c not in ("row", "vector")]
        table = items.slice(start, count).select(cols).to_pylist()
        # ``id`` would shadow the primary key in results: stored as ``item_id``
        return [
            {("item_id" if k == "id" else k): v for k, v in r.items() if v is not None}
            for r in table
        ]

    def _insert(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        meta = self._metadata(self._n, len(vectors))
        for s in range(0, len(vectors), INSERT_CHUNK):
            rows = [
                {**meta[i], "row": self._n + i, "vector": vectors[i].tolist()}
                for i in range(s, min(s + INSERT_CHUNK, len(vectors)))
            ]
            self.client.insert(self.name, rows)
        self._n += len(vectors)

    def build(self, vectors: np.ndarray) -> None:
        """A full rebuild goes to a new collection generation; the committed one stays
        until an index that no longer references it is opened (see ``load``)."""
        if self.client.has_collection(self.name) and self._committed is not None:
            base, _, gen = self.name.rpartition("_g")
            self._retired.append(self.name)
            self.spec["collection"] = (
                f"{base}_g{int(gen) + 1}" if gen.isdigit() else f"{self.name}_g1"
            )
        self._create()
        if len(vectors):
            self._insert(vectors)

    def add(self, vectors: np.ndarray) -> None:
        if not self.client.has_collection(self.name):
            self._create()
        self._insert(vectors)

    # -- querying -------------------------------------------------------------------
    def _params(self) -> dict:
        s = {**self.spec, **self.overrides}
        params = {}
        if s.get("index_type", "FLAT").startswith("IVF"):
            params["nprobe"] = int(s.get("nprobe", 16))
        if s.get("index_type", "FLAT").startswith("HNSW"):
            params["ef"] = int(s.get("ef_search", 64))
        return {"metric_type": "IP", "params": params}

    def _raw(self, queries: np.ndarray, limit: int, expr: str = "") -> list[list[tuple]]:
        res = self.client.search(
            self.name,
            data=[q.tolist() for q in queries],
            filter=expr,
            limit=int(limit),
            output_fields=["row"],
            search_params=self._params(),
            anns_field="vector",
        )
        return [[(float(h["distance"]), int(h["entity"]["row"])) for h in hits] for hits in res]

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None, expr: str = ""):
        """Top-``k`` ``(scores, rows)`` like ``FaissStore.search`` (``-1`` pads);
        ``expr`` adds a native Milvus filter on the metadata fields."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self._n, MAX_TOPK))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        if self._n == 0:
            return scores, found
        if rows is None or len(rows) <= EXPR_ROWS:
            parts = [expr] if expr else []
            if rows is not None:
                parts.append(f"row in [{','.join(str(int(r)) for r in rows)}]")
            hits = self._raw(queries, k, " and ".join(f"({p})" for p in parts))
        else:  # over-fetch, then keep the allowed rows
            allowed = set(np.asarray(rows).tolist())
            hits = [[] for _ in queries]
            todo = list(range(len(queries)))
            fetch = min(MAX_TOPK, self._n, max(4 * k, int(k * self._n / len(allowed)) * 2))
            while todo:
                got = self._raw(queries[todo], fetch, expr)
                nxt = []
                for qi, h in zip(todo, got, strict=True):
                    hits[qi] = [x for x in h if x[1] in allowed][:k]
                    if len(hits[qi]) < k and fetch < min(MAX_TOPK, self._n):
                        nxt.append(qi)
                todo, fetch = nxt, min(MAX_TOPK, self._n, fetch * 4)
        for i, h in enumerate(hits):
            for j, (s, r) in enumerate(h[:k]):
                scores[i, j], found[i, j] = s, r
        return scores, found

    def query(self, expr: str, fields=("row",), limit: int = 16384) -> list[dict]:
        """Entities matching a native Milvus filter (metadata lives in Milvus too)."""
        return self.client.query(self.name, filter=expr, output_fields=list(fields), limit=limit)

    def count(self) -> int:
        res = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    # -- persistence ----------------------------------------------------------------
    def save(self, folder: Path) -> list[str]:
        if not self.client.has_collection(self.name):
            self._create()
        self.client.flush(self.name)
        info = {
            "uri": self.spec["uri"],
            "collection": self.name,
            "count": self._n,
            "retired": self._retired,
        }
        (Path(folder) / MILVUS_FILE).write_text(json.dumps(info, indent=2))
        self._committed = self._n
        return [MILVUS_FILE]

    def load(self, folder: Path) -> None:
        path = Path(folder) / MILVUS_FILE
        if not path.exists():
            raise IndexFormatError(f"{folder}: milvus store without {MILVUS_FILE}")
        info = json.loads(path.read_text())
        self.spec["uri"], self.spec["collection"] = info["uri"], info["collection"]
        if not self.client.has_collection(self.name):
            raise IndexFormatError(
                f"{folder}: Milvus collection {self.name!r} not found at {info['uri']}"
            )
        self.client.load_collection(self.name)
        # roll back appends of a save that never committed, drop superseded generations
        self.client.delete(self.name, filter=f"row >= {int(info['count'])}")
        for old in info.get("retired", []):
            if old != self.name and self.client.has_collection(old):
                self.client.drop_collection(old)
        self._n = self.count()
        self._committed = self._n
        self._retired = []
        if self._n != info["count"]:
            raise IndexFormatError(
                f"{folder}: Milvus collection {self.name!r} holds {self._n} rows, expected {info['count']}"
            )
