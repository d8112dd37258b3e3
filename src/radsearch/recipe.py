"""Retrieval recipes: label-free, training-free post-processing of embeddings and hits.

A recipe is stored in the index manifest (``manifest["recipe"]``, what
:meth:`Recipe.to_manifest` returns) and applied by :func:`radsearch.search.knn_rows`,
the one neighbour path behind ``search``, ``serve`` and ``evaluate``, so the API and
the benchmark never disagree. Everything a recipe learns is fitted on the index's
own embeddings (never on labels, never on queries); the fitted arrays live in
``DIR/recipe.npz`` beside the manifest, which records their digest.

Steps, in the order they apply (each optional; see :data:`DEFAULTS`):

``whiten``   centring + PCA-whitening fitted on the index: ``dim`` keeps the leading
             components, ``power`` scales component i by ``lambda_i ** -power/2``
             (1: full whitening, 0: rotation only), ``shrinkage`` s regularises the
             eigenvalues (``lambda + s * mean(lambda)``).
``cluster``  local whitening: k-means (``n`` clusters, fixed seed) on the index's
             embeddings; each vector is centred and whitened with its own cluster's
             statistics and tagged with a one-hot block of weight ``weight``, so
             neighbours come from the same cluster (a modality / body region found
             without labels) and are compared along that cluster's own axes.
``dba``      database-side augmentation (Arandjelovic & Zisserman 2012): each index
             vector is replaced by the normalised, ``alpha``-weighted sum of its ``k``
             nearest index vectors (itself included).
``qe``       alpha query expansion (Radenovic et al. 2018): the query is replaced by
             the normalised sum of itself and its top ``k`` hits weighted by
             ``score ** alpha``; the candidates are re-scored.
``rerank``   k-reciprocal re-ranking (Zhong et al. 2017) on each query's candidate
             list (``candidates`` hits): Jaccard distance of k-reciprocal
             neighbourhoods (``k1``, local expansion ``k2``) blended with the
             original distance by ``lambda``.
``flip``     horizontal-flip test-time augmentation of the query image (the mean of
             the image's and its mirror's embeddings).

The transformed vectors always keep the index's dimension (zero-padded where a step
reduces it), so the vector store is unaffected by the recipe's shape.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np

from radsearch.errors import RadsearchError

STATE_FILE = "recipe.npz"
RECIPE_VERSION = 1

# Default settings of each step when it is switched on with ``True`` / ``{}``.
DEFAULTS: dict[str, dict] = {
    "whiten": {"dim": None, "power": 1.0, "shrinkage": 0.1},
    "cluster": {"n": 8, "weight": 1.0, "dim": 128, "power": 1.0, "shrinkage": 0.1, "seed": 0},
    "dba": {"k": 3, "alpha": 3.0},
    "qe": {"k": 3, "alpha": 3.0},
    "rerank": {"k1": 20, "k2": 6, "lambda": 0.3, "candidates": 100},
    "flip": {},
}
STEPS = tuple(DEFAULTS)
_CHUNK = 256  # queries re-ranked at a time (bounds memory)


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _pad(x: np.ndarray, dim: int) -> np.ndarray:
    if x.shape[1] == dim:
        return np.ascontiguousarray(x, np.float32)
    if x.shape[1] > dim:
        raise RadsearchError(f"recipe produced {x.shape[1]}-d vectors for a {dim}-d index")
    out = np.zeros((len(x), dim), np.float32)
    out[:, : x.shape[1]] = x
    return out


def fit_whitening(x: np.ndarray, dim: int | None, power: float, shrinkage: float):
    """``(mean, projection)``: ``(x - mean) @ projection`` is PCA-whitened."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(1, len(x) - 1)
    lam, vec = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, vec = np.clip(lam[order], 0.0, None), vec[:, order]
    # the rank of a centred sample is at most n-1: drop the null directions
    rank = int(min(len(x) - 1, x.shape[1]))
    keep = max(1, min(dim or rank, rank))
    lam, vec = lam[:keep], vec[:, :keep]
    lam_reg = lam + shrinkage * float(lam.mean()) + 1e-12
    proj = vec * lam_reg ** (-power / 2.0)
    # a deterministic sign per component (eigh's signs are arbitrary)
    proj *= np.sign(proj[np.argmax(np.abs(proj), axis=0), np.arange(proj.shape[1])])
    return mean.astype(np.float32), proj.astype(np.float32)


def _knn_self(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product kNN of ``x`` among its own rows (itself first)."""
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    idx = faiss.IndexFlatIP(x.shape[1])
    idx.add(x)
    return idx.search(x, min(k, len(x)))


def _flip_batch(batch):
    """Mirror a preprocessed batch (arrays ``...xHxW``; lists/tuples/dicts of them)."""
    if isinstance(batch, np.ndarray):
        return np.ascontiguousarray(batch[..., ::-1])
    if isinstance(batch, dict):
        return {k: _flip_batch(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_flip_batch(v) for v in batch)
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.flip(-1)
    raise RadsearchError(f"flip TTA: cannot mirror a batch of type {type(batch).__name__}")


def k_reciprocal_distance(sim: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Re-ranked distances from item 0 (the query) to items ``1..n-1``.

    ``sim``: ``BxNxN`` cosine similarities of the query (row/column 0) and its
    candidates. Implements Zhong et al. (2017) on this local set: k-reciprocal
    neighbours with the 2/3 expansion rule, Gaussian-weighted neighbourhood vectors,
    local query expansion over ``k2`` neighbours, Jaccard distance blended with the
    original distance by ``lam``. Returns ``Bx(N-1)``.
    """
    sim = np.asarray(sim, np.float32)
    b, n, _ = sim.shape
    dist = np.clip(2.0 - 2.0 * sim, 0.0, None)
    rank = np.argsort(dist, axis=-1, kind="stable")
    bi = np.arange(b)[:, None, None]
    ii = np.arange(n)[None, :, None]

    def reciprocal(k):
        k = max(1, min(k, n - 1))
        a = np.zeros((b, n, n), bool)
        a[bi, ii, rank[:, :, : k + 1]] = True
        return a & a.transpose(0, 2, 1)

    r = reciprocal(k1)
    rh = reciprocal(int(round(k1 / 2)))
    rf, rhf = r.astype(np.float32), rh.astype(np.float32)
    overlap = rf @ rhf.transpose(0, 2, 1)  # |R(i) & Rh(j)|
    size_h = rhf.sum(-1)[:, None, :]
    take = r & (overlap > (2.0 / 3.0) * size_h)
    expanded = r | ((take.astype(np.float32) @ rhf) > 0)
    v = np.where(expanded, np.exp(-dist), 0.0).astype(np.float32)
    v /= np.maximum(v.sum(-1, keepdims=True), 1e-12)
    if k2 > 1:
        nb = rank[:, :, : min(k2, n)]  # BxNxk2
        v = v[np.arange(b)[:, None, None], nb].mean(axis=2)
    q = v[:, :1, :]  # Bx1xN
    inter = np.minimum(q, v).sum(-1)
    union = np.maximum(q, v).sum(-1)
    jac = 1.0 - inter / np.maximum(union, 1e-12)
    final = (1.0 - lam) * jac + lam * dist[:, 0, :]
    return final[:, 1:]


class Recipe:
    """A retrieval recipe: settings (:data:`STEPS`) + what was fitted on the index."""

    def __init__(self, steps: dict | None = None, state: dict | None = None):
        self.steps: dict[str, dict] = {}
        for name, opts in (steps or {}).items():
            if name not in DEFAULTS:
                raise RadsearchError(f"unknown recipe step {name!r} (known: {', '.join(STEPS)})")
            if opts is False or opts is None:
                continue
            given = {} if opts is True else dict(opts)
            unknown = set(given) - set(DEFAULTS[name])
            if unknown:
                raise RadsearchError(f"recipe step {name!r}: unknown option(s) {sorted(unknown)}")
            self.steps[name] = {**DEFAULTS[name], **given}
        self.state: dict[str, np.ndarray] = dict(state or {})
        self._db_cache: tuple | None = None

    # -- (de)serialisation ----------------------------------------------------------
    @classmethod
    def from_manifest(cls, spec: dict, state: dict | None = None) -> Recipe:
        if not isinstance(spec, dict):
            raise RadsearchError(f"recipe must be a JSON object, got {type(spec).__name__}")
        version = spec.get("version", RECIPE_VERSION)
        if version > RECIPE_VERSION:
            raise RadsearchError(
                f"recipe version {version} is newer than this radsearch ({RECIPE_VERSION})"
            )
        steps = spec.get("steps", {k: v for k, v in spec.items() if k in DEFAULTS})
        recipe = cls(steps)
        if state is not None and spec.get("state_digest") == _digest(state):
            recipe.state = dict(state)
        return recipe

    @classmethod
    def from_json(cls, path) -> Recipe:
        from pathlib import Path

        if not Path(path).is_file():
            raise RadsearchError(f"{path}: no such file")
        text = Path(path).read_text()
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RadsearchError(f"{path}: not a recipe JSON file ({exc})") from None
        return cls.from_manifest(spec.get("recipe", spec))

    def to_manifest(self) -> dict:
        d: dict = {"version": RECIPE_VERSION, "steps": copy.deepcopy(self.steps)}
        if self.state:
            d["state"] = STATE_FILE
            d["state_digest"] = _digest(self.state)
        return d

    def settings(self) -> dict:
        """The steps alone (what ``tune`` writes and ``--recipe`` reads)."""
        return {"version": RECIPE_VERSION, "steps": copy.deepcopy(self.steps)}

    def describe(self) -> str:
        if not self.steps:
            return "none"
        parts = []
        for name, opts in self.steps.items():
            o = ",".join(f"{k}={v}" for k, v in opts.items() if k != "seed")
            parts.append(f"{name}({o})" if o else name)
        return " + ".join(parts)

    def __repr__(self) -> str:
        return f"Recipe({self.describe()})"

    # -- fitting --------------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        return "whiten" in self.steps or "cluster" in self.steps

    @property
    def fitted(self) -> bool:
        return not self.needs_fit or bool(self.state)

    @property
    def needs_refit_on_change(self) -> bool:
        """Adding/removing items changes fitted statistics or DBA neighbourhoods."""
        return self.needs_fit or "dba" in self.steps

    def fit(self, embeddings: np.ndarray) -> Recipe:
        """Fit the label-free statistics on the index's own embeddings."""
        x = np.asarray(embeddings, np.float32)
        self.state = {}
        self._db_cache = None
        if not self.needs_fit or len(x) < 2:
            return self
        dim = x.shape[1]
        raw = x
        if "whiten" in self.steps:
            w = self.steps["whiten"]
            mean, proj = fit_whitening(x, w["dim"], w["power"], w["shrinkage"])
            self.state["w_mean"], self.state["w_proj"] = mean, proj
            x = _l2n((x - mean) @ proj)
        if "cluster" in self.steps:
            c = self.steps["cluster"]
            n = int(max(1, min(c["n"], len(x) // 8 or 1)))
            # clusters are found on the encoder's own vectors (where modalities and body
            # regions separate best); the local statistics on the (whitened) vectors
            cent = _kmeans(raw, n, int(c["seed"]))
            assign = _assign(raw, cent)
            cdim = int(min(c["dim"] or dim, dim - n))
            means = np.zeros((n, x.shape[1]), np.float32)
            projs = np.zeros((n, x.shape[1], cdim), np.float32)
            for j in range(n):
                xj = x[assign == j]
                if len(xj) < 3:
                    means[j] = xj.mean(0) if len(xj) else 0.0
                    projs[j] = np.eye(x.shape[1], cdim, dtype=np.float32)
                    continue
                m, p = fit_whitening(xj, cdim, c["power"], c["shrinkage"])
                means[j], projs[j, :, : p.shape[1]] = m, p
            self.state.update(c_centroids=cent, c_means=means, c_projs=projs)
        return self

    def _ensure_fitted(self, index) -> None:
        if not self.fitted:
            self.fit(np.asarray(index.embeddings))

    # -- vector transforms ----------------------------------------------------------
    def _project(self, x: np.ndarray) -> np.ndarray:
        """Whitening and local whitening (shared by index and query sides)."""
        x = np.asarray(x, np.float32)
        dim = x.shape[1]
        if not len(x):
            return x
        raw = x
        if "w_proj" in self.state:
            x = _l2n((x - self.state["w_mean"]) @ self.state["w_proj"])
        if "c_centroids" in self.state:
            cent, means, projs = (self.state[k] for k in ("c_centroids", "c_means", "c_projs"))
            n, cdim = len(cent), projs.shape[2]
            assign = _assign(raw, cent)
            local = np.zeros((len(x), cdim), np.float32)
            for j in np.unique(assign):
                sel = assign == j
                local[sel] = (x[sel] - means[j]) @ projs[j]
            tag = np.zeros((len(x), n), np.float32)
            tag[np.arange(len(x)), assign] = float(self.steps["cluster"]["weight"])
            x = np.concatenate([tag, _l2n(local)], axis=1)
        return _pad(_l2n(x), dim)

    def transform_db(self, emb: np.ndarray) -> np.ndarray:
        """Index side: ``emb`` are *all* the index's embeddings (DBA looks at them)."""
        x = self._project(emb)
        if "dba" in self.steps and len(x) > 1:
            d = self.steps["dba"]
            sims, nbrs = _knn_self(x, int(d["k"]))
            w = np.clip(sims, 0.0, None) ** float(d["alpha"])
            w[:, 0] = 1.0  # itself
            x = _l2n(np.einsum("nk,nkd->nd", w, x[nbrs]))
        return x

    def transform_query(self, q: np.ndarray, index=None) -> np.ndarray:
        if index is not None:
            self._ensure_fitted(index)
        return self._project(q)

    def db_matrix(self, index) -> np.ndarray:
        """The store's vectors (the index side of the recipe), cached per index state."""
        key = (id(index), index.count, json.dumps(index.manifest.get("recipe"), sort_keys=True))
        if self._db_cache is None or self._db_cache[0] != key:
            self._ensure_fitted(index)
            self._db_cache = (key, self.transform_db(np.asarray(index.embeddings)))
        return self._db_cache[1]

    # -- hit lists ------------------------------------------------------------------
    def candidates(self, k: int) -> int:
        """How many hits ``knn_rows`` fetches before :meth:`rerank` (>= k)."""
        n = k
        if "qe" in self.steps:
            n = max(n, 4 * k, int(self.steps["qe"]["k"]) + k, 50)
        if "rerank" in self.steps:
            n = max(n, int(self.steps["rerank"]["candidates"]), k)
        return n

    def rerank(self, index, q: np.ndarray, scores: np.ndarray, rows: np.ndarray):
        """Query expansion and k-reciprocal re-ranking of each query's candidates."""
        if "qe" not in self.steps and "rerank" not in self.steps:
            return scores, rows
        scores, rows = np.asarray(scores, np.float32).copy(), np.asarray(rows).copy()
        if rows.size == 0:
            return scores, rows
        db = self.db_matrix(index)
        for start in range(0, len(q), _CHUNK):
            sl = slice(start, start + _CHUNK)
            scores[sl], rows[sl] = self._rerank_chunk(db, q[sl], scores[sl], rows[sl])
        return scores, rows

    def _rerank_chunk(self, db, q, scores, rows):
        valid = rows >= 0
        cand = db[np.where(valid, rows, 0)]  # BxMxD
        cand[~valid] = 0.0
        if "qe" in self.steps:
            e = self.steps["qe"]
            kq = int(e["k"])
            w = np.clip(scores[:, :kq], 0.0, None) ** float(e["alpha"])
            w = np.where(valid[:, :kq], w, 0.0)
            q = _l2n(q + np.einsum("bk,bkd->bd", w, cand[:, :kq]))
            scores = np.einsum("bd,bmd->bm", q, cand)
        if "rerank" in self.steps:
            r = self.steps["rerank"]
            allv = np.concatenate([q[:, None, :], cand], axis=1)
            sim = allv @ allv.transpose(0, 2, 1)
            dist = k_reciprocal_distance(sim, int(r["k1"]), int(r["k2"]), float(r["lambda"]))
            scores = 1.0 - dist
        scores = np.where(valid, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores = np.take_along_axis(scores, order, 1)
        rows = np.take_along_axis(rows, order, 1)
        rows = np.where(np.isfinite(scores), rows, -1)
        return scores.astype(np.float32), rows

    # -- query encoding -------------------------------------------------------------
    def encode_queries(self, encoder, images: list) -> np.ndarray:
        """Query images -> vectors; with ``flip``, the mean of image and mirror."""
        if "flip" not in self.steps or not images:
            return encoder.encode_images(images)
        batch = encoder.collate([encoder.preprocess_fn()(im) for im in images])
        return self.encode_batch(encoder, batch)

    def encode_batch(self, encoder, batch) -> np.ndarray:
        """A collated, preprocessed query batch -> vectors (``flip``: image and mirror)."""
        if "flip" not in self.steps:
            return encoder.encode(batch)
        return _l2n(encoder.encode(batch) + encoder.encode(_flip_batch(batch)))


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        a = np.ascontiguousarray(state[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _kmeans(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Deterministic spherical k-means (k-means++ init, Lloyd iterations)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    cent = [x[rng.integers(len(x))]]
    d2 = np.full(len(x), np.inf)
    for _ in range(1, n):
        d2 = np.minimum(d2, ((x - cent[-1]) ** 2).sum(1))
        p = d2 / d2.sum() if d2.sum() > 0 else None
        cent.append(x[rng.choice(len(x), p=p)])
    c = np.stack(cent)
    for _ in range(50):
        a = _assign(x, c)
        new = np.stack([x[a == j].mean(0) if np.any(a == j) else c[j] for j in range(n)])
        new = _l2n(new)
        if np.allclose(new, c, atol=1e-6):
            break
        c = new
    return c.astype(np.float32)


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(x, np.float32) @ centroids.T, axis=1)


def load_recipe(value) -> Recipe | None:
    """A ``Recipe`` from a JSON file path, a JSON string, a dict or ``none``."""
    if value is None or isinstance(value, Recipe):
        return value
    if isinstance(value, dict):
        return Recipe.from_manifest(value.get("recipe", value))
    text = str(value).strip()
    if text.lower() in ("", "none", "plain"):
        return None
    if text.startswith("{"):
        return Recipe.from_manifest(json.loads(text))
    return Recipe.from_json(text)
