"""The index directory: the contract between stages.

``DIR/manifest.json`` (encoder name + config + hash, dim, metric, count, store, recipe,
versions), ``DIR/items.parquet`` (row i = vector i: ``id``, ``source``, metadata, and
how the row was read: see ``radsearch.index.rows``),
``DIR/embeddings.npy`` (the encoder's L2-normalised vectors, before any recipe) and the
vector store's files (``vectors.faiss``). Every write goes through ``save``: staged,
committed with a rename, moved into place manifest last, under a write lock that
refuses a second writer; ``open`` rolls an interrupted commit forward and retries a
read a commit overlapped (see ``radsearch.index.commit``), so a crash never leaves a
half-written index and readers never break a commit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from radsearch.encoders import Encoder, EncoderConfig, create_encoder, get_config, quantize
from radsearch.errors import IndexFormatError, RadsearchError
from radsearch.index import rows as _rows
from radsearch.index.commit import ABSORBS_WORK, MANIFEST, recover, settle, unchanged, writing
from radsearch.index.manifest import check_manifest, fsync_file, now, versions
from radsearch.io.items import ItemRef
from radsearch.regions import features as regions_hooks

ITEMS = "items.parquet"
EMBEDDINGS = "embeddings.npy"
FORMAT_VERSION = 1


RESERVED_COLUMNS = ("id", "source", "rank", "score")


def metadata_column(key: str) -> str:
    """Column name for a metadata key; keys that collide with a hit's own fields
    (e.g. RadBench's ``source`` column) are kept as ``meta_<key>``."""
    return f"meta_{key}" if key in RESERVED_COLUMNS else key


class Index:
    """Vectors + metadata + manifest; search through ``radsearch.search``."""

    def __init__(self, path: Path, manifest: dict, items, embeddings: np.ndarray, store):
        self.path = Path(path)
        self.manifest = manifest
        # pyarrow.Table of id, source and metadata; how each row was read is kept apart
        self.items, self._read = _rows.split_table(items)
        self.embeddings = embeddings
        self.store = store
        if hasattr(store, "bind"):  # stores that keep metadata too (Milvus)
            store.bind(self)
        self._encoder: Encoder | None = None
        self._row_of: dict[str, int] | None = None
        self._present: set | None = None  # (source, frame) of every row
        self._recipe: tuple[str, object] | None = None  # (manifest spec as JSON, Recipe)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        encoder: str | EncoderConfig,
        *,
        store: dict | None = None,
        recipe: dict | None = None,
    ) -> Index:
        """A new, empty index (written on the first ``save``). Refuses an existing one."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise IndexFormatError(f"{path}: an index already exists here")
        cfg = encoder if isinstance(encoder, EncoderConfig) else get_config(encoder)
        manifest = {
            "format_version": FORMAT_VERSION,
            "encoder": {"name": cfg.name, "hash": cfg.hash, "config": cfg.to_dict()},
            "dim": cfg.dim,
            "metric": "inner_product",
            "normalized": True,
            "count": 0,
            "store": dict(store or {"kind": "faiss", "type": "flat"}),
            "recipe": recipe,
            "created": now(),
        }
        import pyarrow as pa

        items = pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string())})
        emb = np.zeros((0, cfg.dim), np.float32)
        return cls(path, manifest, items, emb, cls._make_store(manifest))

    @classmethod
    def open(cls, path: str | Path, *, mmap: bool = True) -> Index:
        """Open an index directory, checking that its parts agree with each other.

        Safe while another process commits: a read that a commit overlapped is retried.
        """
        path = Path(path)
        if not path.is_dir():
            raise IndexFormatError(f"{path}: no such index directory")
        for _ in range(100):
            stamp = settle(path)
            try:
                parts = cls._read_parts(path, mmap)
            except IndexFormatError:
                if unchanged(path, stamp):
                    raise  # damaged, not merely caught mid-commit
                continue
            if unchanged(path, stamp):
                return cls(path, *parts)
        raise IndexFormatError(f"{path}: keeps changing while being read; try again")

    @classmethod
    def _read_parts(cls, path: Path, mmap: bool):
        import pyarrow.parquet as pq

        mpath = path / MANIFEST
        if not mpath.exists():
            raise IndexFormatError(f"{path}: not a radsearch index (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"{mpath}: damaged manifest ({exc})") from None
        check_manifest(manifest, mpath)
        try:
            items = pq.read_table(path / ITEMS)
            emb = np.load(path / EMBEDDINGS, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{path}: damaged index files ({exc})") from None
        n = manifest["count"]
        if items.num_rows != n or emb.ndim != 2 or emb.shape != (n, manifest["dim"]):
            raise IndexFormatError(
                f"{path}: parts disagree (manifest count {n}, items {items.num_rows}, "
                f"embeddings {emb.shape})"
            )
        store = cls._make_store(manifest)
        try:
            store.load(path)
        except RadsearchError:
            raise
        except Exception as exc:  # FAISS and Milvus raise their own types
            raise IndexFormatError(
                f"{path}: cannot load the vector store ({type(exc).__name__}: {exc})"
            ) from None
        if store.ntotal != n:
            raise IndexFormatError(
                f"{path}: vector store holds {store.ntotal} vectors, expected {n}"
            )
        return manifest, items, emb, store

    @staticmethod
    def _make_store(manifest: dict):
        spec = manifest["store"]
        if spec.get("kind", "faiss") == "faiss":
            from radsearch.index.faiss_store import FaissStore

            return FaissStore(manifest["dim"], spec)
        if spec["kind"] == "milvus":
            from radsearch.index.milvus_store import MilvusStore

            return MilvusStore(manifest["dim"], spec)
        raise IndexFormatError(f"unknown vector store kind {spec['kind']!r}")

    # -- properties -----------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig.from_dict(self.manifest["encoder"]["config"])

    @property
    def encoder_name(self) -> str:
        return self.manifest["encoder"]["name"]

    @property
    def recipe(self):
        """The retrieval recipe stored with the index (``None``: plain cosine kNN).

        Built once per manifest recipe and cached; its fitted arrays come from
        ``DIR/recipe.npz`` when their digest matches the manifest (else it refits on
        this index's embeddings, which gives the same arrays).
        """
        spec = self.manifest.get("recipe")
        if not spec:
            return None
        key = json.dumps(spec, sort_keys=True)
        if self._recipe is not None and self._recipe[0] == key:
            return self._recipe[1]
        from radsearch.recipe import STATE_FILE, Recipe

        state = None
        if spec.get("state") and (self.path / STATE_FILE).exists():
            with np.load(self.path / STATE_FILE, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        recipe = Recipe.from_manifest(spec, state=state)
        if not recipe.fitted:
            recipe.fit(np.asarray(self.embeddings))
        self._recipe = (key, recipe)
        return recipe

    def encoder(self, device: str = "cpu", weights: str | None = None) -> Encoder:
        """The index's own encoder, built from the stored config (cached)."""
        if self._encoder is None:
            self._encoder = create_encoder(self.encoder_config, weights=weights, device=device)
            quantize.load_for_index(self._encoder, self.path, self.manifest)
        return self._encoder

    def check_model(self, name: str | None) -> None:
        """Refuse to use an index with an encoder other than the one that built it."""
        if not name:
            return
        cfg = get_config(name)
        mine = self.manifest["encoder"]
        if cfg.hash != mine["hash"]:
            raise IndexFormatError(
                f"{self.path}: index was built with encoder {mine['name']!r} "
                f"(config {mine['hash']}); refusing to use it with {name!r} (config {cfg.hash})"
            )

    def row_of(self, item_id: str) -> int | None:
        if self._row_of is None:
            self._row_of = {v: i for i, v in enumerate(self.items.column("id").to_pylist())}
        return self._row_of.get(item_id)

    def item(self, item_id: str) -> dict | None:
        row = self.row_of(item_id)
        return None if row is None else self.rows([row])[0]

    def rows(self, rows) -> list[dict]:
        """Metadata dicts of the given rows (nulls as empty strings)."""
        taken = self.items.take(np.asarray(rows, dtype=np.int64)).to_pylist()
        return [{k: ("" if v is None else v) for k, v in r.items()} for r in taken]

    @property
    def ids(self) -> set[str]:
        self.row_of("")
        return set(self._row_of)

    def ref(self, row: int) -> ItemRef:
        """Row ``row`` as the ``ItemRef`` it was indexed from (frame, window, kind)."""
        return self.refs([row])[0]

    def refs(self, rows) -> list[ItemRef]:
        """``ItemRef``s of ``rows``: what every reader decodes an indexed image from."""
        return _rows.make_refs(self.items, self._read, rows)

    def new_refs(self, refs: list[ItemRef]) -> list[ItemRef]:
        """The refs whose image is not in the index yet, each with an id free in it."""
        return [r for _, r in self._assign(refs)]

    def _assign(self, refs: list[ItemRef]) -> list[tuple[int, ItemRef]]:
        if self._present is None:
            self._present = _rows.identities(self.items, self._read)
        return _rows.assign(refs, self.ids, set(self._present))

    # -- mutation -------------------------------------------------------------------
    def add(self, refs: list[ItemRef], vectors: np.ndarray, regions=None) -> int:
        """Append items not yet in the index (by id); returns how many were added.

        ``regions``: ``(codes, sizes)`` row-aligned with ``refs`` for an index that keeps
        region features (``radsearch.regions.features``)."""
        import pyarrow as pa

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IndexFormatError(
                f"{self.path}: vectors of dim {vectors.shape[-1]} != index dim {self.dim}"
            )
        planned = self._assign(list(refs))
        if not planned:
            return 0
        keep = [i for i, _ in planned]
        new_refs = [r for _, r in planned]
        new_vecs = vectors[keep]
        safe = _rows.safe_text
        cols = {"id": [r.id for r in new_refs], "source": [safe(r.source) for r in new_refs]}
        keys: list[str] = []
        for r in new_refs:
            for k in r.metadata:
                if k not in keys and not k.startswith("_"):
                    keys.append(k)
        for k in keys:
            vals = [r.metadata.get(k) for r in new_refs]
            cols[metadata_column(k)] = [None if v is None else safe(str(v)) for v in vals]
        from radsearch.studies.identity import STUDY_COLUMN, study_of

        cols[STUDY_COLUMN] = [safe(study_of(r)) for r in new_refs]
        new_items = pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})
        self.items = pa.concat_tables([self.items, new_items], promote_options="permissive")
        self._read = pa.concat_tables([self._read, _rows.read_columns(new_refs)])
        self.embeddings = np.concatenate([np.asarray(self.embeddings), new_vecs])
        regions_hooks.on_add(self, keep, regions)
        self._after_change(appended=new_vecs)
        return len(keep)

    def remove(self, ids) -> int:
        """Drop items by id; returns how many were found and removed."""
        drop = {self.row_of(i) for i in ids} - {None}
        if not drop:
            return 0
        keep = np.asarray([i for i in range(self.count) if i not in drop], dtype=np.int64)
        self.items = self.items.take(keep)
        self._read = self._read.take(keep)
        self.embeddings = np.asarray(self.embeddings)[keep]
        regions_hooks.on_remove(self, keep)
        self._after_change(appended=None)
        return len(drop)

    def _after_change(self, appended: np.ndarray | None) -> None:
        self.manifest["count"] = int(self.items.num_rows)
        self._row_of = None
        self._present = None
        recipe = self.recipe
        if recipe is not None and recipe.needs_refit_on_change:
            recipe.fit(np.asarray(self.embeddings))
            self.manifest["recipe"] = recipe.to_manifest()
            self._recipe = (json.dumps(self.manifest["recipe"], sort_keys=True), recipe)
            appended = None
        if appended is not None and self.store.ntotal + len(appended) == self.count:
            self.store.add(self.db_vectors(appended))
        else:
            self.store.build(self.db_vectors(np.asarray(self.embeddings)))

    def db_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        """What the vector store holds for these embeddings (the recipe's database side)."""
        recipe = self.recipe
        return embeddings if recipe is None else recipe.transform_db(embeddings)

    def set_recipe(self, recipe) -> None:
        """Attach (and fit on this index's embeddings) a recipe; rebuilds the store."""
        if recipe is not None:
            recipe.fit(np.asarray(self.embeddings))
        self.manifest["recipe"] = None if recipe is None else recipe.to_manifest()
        self._recipe = None
        if recipe is not None:
            self._recipe = (json.dumps(self.manifest["recipe"], sort_keys=True), recipe)
        self.store.build(self.db_vectors(np.asarray(self.embeddings)))

    # -- persistence ----------------------------------------------------------------
    def save(self, *, absorbs_work: bool = False) -> None:
        """Write every part, atomically with respect to crashes (see module docstring).

        Holds the write lock (refusing while another process writes); ``absorbs_work``:
        the commit also removes the embedding checkpoints in ``DIR/.work``.
        """
        with writing(self.path):
            recover(self.path)
            stage = self.path / ".next"
            stage.mkdir()
            try:
                self._write_stage(stage)
                if absorbs_work:
                    (stage / ABSORBS_WORK).touch()
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            os.replace(stage, self.path / ".commit")
            recover(self.path)

    def _write_stage(self, stage: Path) -> None:
        import pyarrow.parquet as pq

        pq.write_table(_rows.join_table(self.items, self._read), stage / ITEMS)
        np.save(stage / EMBEDDINGS, np.asarray(self.embeddings, dtype=np.float32))
        self.store.save(stage)
        regions_hooks.on_save(self, stage)
        if self._encoder is not None:
            quantize.save_for_index(self._encoder, stage, self.manifest)
        recipe = self.recipe
        if recipe is not None and recipe.state:
            from radsearch.recipe import STATE_FILE

            np.savez(stage / STATE_FILE, **recipe.state)
        self.manifest["updated"] = now()
        self.manifest["versions"] = versions()
        self.manifest["count"] = int(self.items.num_rows)
        (stage / MANIFEST).write_text(json.dumps(self.manifest, indent=2))
        for p in stage.iterdir():
            fsync_file(p)

    # -- search ---------------------------------------------------------------------
    def search(self, queries, k: int = 10, **options):
        """Images (arrays or paths) or vectors in, one ``QueryResult`` per query out.

        Options: ``where`` (dict column -> value), ``one_per_patient``, ``suggest``
        (metadata column voted on; default ``label``). See ``radsearch.search``.
        ``roi=(x0, y0, x1, y1)``: region query; ``relevant``/``irrelevant``: ids of
        marked hits for relevance feedback (``radsearch.regions``).
        """
        from radsearch.search import search_index

        if options.get("roi") is not None:  # region query (radsearch.regions.query)
            from radsearch.regions.query import search_regions

            return search_regions(self, queries, k=k, **options)
        if options.get("relevant") or options.get("irrelevant"):
            from radsearch.regions.feedback import search_feedback

            return search_feedback(self, queries, k=k, **options)
        return search_index(self, queries, k=k, **options)

    def describe(self) -> dict:
        m = self.manifest
        cols = [c for c in self.items.column_names if c not in ("id", "source")]
        return {
            "path": str(self.path),
            "encoder": m["encoder"]["name"],
            "encoder_hash": m["encoder"]["hash"],
            "dim": m["dim"],
            "metric": m["metric"],
            "count": m["count"],
            "store": m["store"],
            "recipe": m.get("recipe"),
            "metadata_columns": cols,
            "created": m.get("created"),
            "updated": m.get("updated"),
            "versions": m.get("versions", {}),
        }
