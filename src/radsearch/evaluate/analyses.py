"""The paper's analyses beyond P@k: index size, embedding-space quality, 2-D map,
linear probe. All take L2-normalised vectors and label strings; neighbours always come
from ``radsearch.search.knn_rows`` on an ``Index`` (so a stored recipe applies), here a
throw-away one (:func:`scratch_index`) that ``evaluate`` and ``tune`` search too."""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from radsearch.evaluate.protocol import classification_scores, encode_labels, modified_precision

KNN_BATCH = 4096


def scratch_index(vectors, refs=None, config=None, recipe=None):
    """A throw-away in-memory ``Index`` over ``vectors`` (never saved), in ``refs`` order.

    Without ``refs`` the rows are named by number; without ``config`` the encoder is a
    plain ``vectors`` config of the right dim. ``evaluate`` and ``tune`` search through
    it, so their neighbours come from ``knn_rows`` with the recipe applied."""
    import uuid

    from radsearch.encoders import EncoderConfig
    from radsearch.index import Index
    from radsearch.io.items import ItemRef

    vectors = np.asarray(vectors, np.float32)
    if config is None:
        config = EncoderConfig(
            name="vectors", family="vectors", model_id="vectors", dim=int(vectors.shape[1])
        )
    if refs is None:
        refs = [ItemRef(id=str(i), source=str(i)) for i in range(len(vectors))]
    path = Path(tempfile.gettempdir()) / f"radsearch-scratch-{uuid.uuid4().hex}-never-written"
    index = Index.create(path, config)
    index.add(list(refs), vectors)
    if recipe is not None:
        index.set_recipe(recipe)
    return index


def neighbours(index, qvecs: np.ndarray, k: int, progress: bool = False, desc: str = "kNN"):
    """(scores, rows) of the k nearest index rows per query, via ``knn_rows``, batched."""
    from tqdm import tqdm

    from radsearch.search import knn_rows

    k = min(k, index.count)
    scores = np.full((len(qvecs), k), -np.inf, np.float32)
    rows = np.full((len(qvecs), k), -1, np.int64)
    for s in tqdm(
        range(0, len(qvecs), KNN_BATCH), desc=desc, disable=not progress, file=sys.stderr
    ):
        sc, rw = knn_rows(index, qvecs[s : s + KNN_BATCH], k)
        scores[s : s + len(sc), : sc.shape[1]] = sc
        rows[s : s + len(rw), : rw.shape[1]] = rw
    return scores, rows


def stratified_subsample(codes: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Sorted row numbers: ``ceil(fraction * n)`` (at least 1) rows of every label."""
    codes = np.asarray(codes)
    keep = []
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        n = max(1, int(np.ceil(fraction * len(rows))))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def index_size_study(
    config,
    index_refs,
    index_vecs,
    query_vecs,
    columns: dict,
    fractions,
    seeds: int = 3,
    max_k: int = 10,
    recipe=None,
    progress: bool = False,
) -> dict:
    """Modified P@k versus index size: stratified (by the first column) subsamples,
    ``seeds`` draws per fraction; mean and std over draws, per column.

    ``columns``: name -> (query values, index values)."""
    from tqdm import tqdm

    first = next(iter(columns))
    (strat_codes,), _ = encode_labels(columns[first][1])
    out = {"fractions": [], "index_rows": [], "columns": {c: {} for c in columns}}
    jobs = [(f, s) for f in fractions for s in range(1 if f >= 1 else seeds)]
    results: dict = {}
    for f, s in tqdm(jobs, desc="index-size study", disable=not progress, file=sys.stderr):
        rows = (
            np.arange(len(index_refs))
            if f >= 1
            else stratified_subsample(strat_codes, f, np.random.default_rng(1000 + s))
        )
        sub = scratch_index(index_vecs[rows], [index_refs[i] for i in rows], config, recipe)
        _, nb = neighbours(sub, query_vecs, max_k)
        if nb.shape[1] < max_k:  # a tiny subsample: pad (caps keep padding unscored)
            nb = np.pad(nb, ((0, 0), (0, max_k - nb.shape[1])), constant_values=-1)
        for col, (qv, iv) in columns.items():
            iv_sub = [iv[i] for i in rows]
            (qc, ic), vocab = encode_labels(qv, iv_sub)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = modified_precision(nb, qc, ic, len(vocab), max_k=max_k)
            results.setdefault((col, f), []).append((len(rows), p.micro, p.macro))
    for f in fractions:
        out["fractions"].append(float(f))
        out["index_rows"].append(int(np.mean([r[0] for r in results[(first, f)]])))
        for col in columns:
            runs = results[(col, f)]
            micro = np.stack([r[1] for r in runs])
            macro = np.stack([r[2] for r in runs])
            ks = range(1, micro.shape[1] + 1)
            entry = out["columns"][col]
            for name, arr in (("micro", micro), ("macro", macro)):
                entry.setdefault(name, {str(k): [] for k in ks})
                entry.setdefault(f"{name}_std", {str(k): [] for k in ks})
                for k in ks:
                    entry[name][str(k)].append(float(arr[:, k - 1].mean()))
                    entry[f"{name}_std"][str(k)].append(float(arr[:, k - 1].std()))
    out["seeds"] = seeds
    return out


def sample_rows(n: int, cap: int, seed: int = 0) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def embedding_quality(vectors: np.ndarray, columns: dict, k: int = 10) -> dict:
    """Silhouette (cosine), Davies-Bouldin, leave-one-out kNN label purity, and
    alignment / uniformity (Wang & Isola 2020; positives = same label) per column.

    ``columns``: name -> label values, row-aligned with ``vectors`` (already sampled)."""
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    X = np.asarray(vectors, np.float64)
    sims = X @ X.T
    sq = np.clip(2.0 - 2.0 * sims, 0.0, None)  # squared distance on the unit sphere
    n = len(X)
    off = ~np.eye(n, dtype=bool)
    uniformity = float(np.log(np.exp(-2.0 * sq[off]).mean())) if n > 1 else float("nan")
    masked = np.where(off, sims, -np.inf)
    kk = min(k, n - 1)
    nn = np.argpartition(-masked, kk - 1, axis=1)[:, :kk] if kk > 0 else np.zeros((n, 0), int)
    out = {"sample": n, "uniformity": uniformity}
    for col, values in columns.items():
        (codes,), vocab = encode_labels(values)
        ok = codes >= 0
        res: dict = {}
        labels_here = np.unique(codes[ok])
        if 2 <= len(labels_here) < ok.sum():
            res["silhouette"] = float(silhouette_score(X[ok], codes[ok], metric="cosine"))
            res["davies_bouldin"] = float(davies_bouldin_score(X[ok], codes[ok]))
        else:
            res["silhouette"] = res["davies_bouldin"] = None
        res["knn_purity"] = float((codes[nn][ok] == codes[ok, None]).mean()) if kk else None
        same = (codes[:, None] == codes[None, :]) & off & ok[:, None] & ok[None, :]
        res["alignment"] = float(sq[same].mean()) if same.any() else None
        res["k"] = kk
        out[col] = res
    return out


def map_2d(vectors: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates: UMAP (umap-learn) when available, else t-SNE (scikit-learn)."""
    X = np.asarray(vectors, np.float32)
    if method in ("auto", "umap"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import umap

                reducer = umap.UMAP(
                    n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed
                )
                return reducer.fit_transform(X), "umap"
        except ImportError:
            if method == "umap":
                from radsearch.errors import RadsearchError

                raise RadsearchError(
                    "--map umap needs umap-learn: pip install 'radsearch[eval]'"
                ) from None
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(X) - 1) // 3)))
    tsne = TSNE(
        n_components=2,
        metric="cosine",
        init="pca",
        perplexity=perplexity,
        random_state=seed,
        method="exact" if len(X) <= 500 else "barnes_hut",
        max_iter=500,
    )
    return tsne.fit_transform(X), "tsne"


def linear_probe(
    train_vecs, train_values, test_vecs, test_values, max_train: int = 20000, seed: int = 0
) -> dict:
    """The paper's second protocol: logistic regression on index-split embeddings,
    scored on the query split (accuracy, balanced accuracy, macro F1)."""
    from sklearn.linear_model import LogisticRegression

    (tr, te), vocab = encode_labels(train_values, test_values)
    ok = np.flatnonzero(tr >= 0)
    if len(np.unique(tr[ok])) < 2:
        return {"skipped": "fewer than two labels in the index split"}
    if len(ok) > max_train:
        ok = np.sort(np.random.default_rng(seed).choice(ok, size=max_train, replace=False))
    clf = LogisticRegression(max_iter=300, C=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(np.asarray(train_vecs)[ok], tr[ok])
    pred = clf.predict(np.asarray(test_vecs)).astype(np.int64)
    res = classification_scores(te, pred, len(vocab))
    res["train_rows"] = int(len(ok))
    return res
