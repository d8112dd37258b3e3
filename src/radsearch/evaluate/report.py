"""Plots (matplotlib, Agg) and one self-contained ``report.html`` (PNGs and thumbnails
embedded as base64), plus ``radsearch compare``'s table and plot."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

MAX_BAR_LABELS = 60
MAX_CONFUSION_LABELS = 40
THUMB = 72


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str, mime: str = "png") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/{mime};base64,{b64}">'


def _curve(ax, d: dict, label: str, **kw):
    ks = sorted(int(k) for k in d)
    ys = [d[str(k)] for k in ks]
    ax.plot(ks, [np.nan if y is None else y for y in ys], label=label, **kw)


def plot_pk(metrics: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for col, pk in metrics["precision_at_k"].items():
        line = ax.plot([], [])[0]
        _curve(ax, pk["micro"], f"{col} micro", color=line.get_color())
        _curve(ax, pk["macro"], f"{col} macro", color=line.get_color(), linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("modified precision at k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Precision at k (k capped at the label's index rows)")
    return _png(fig)


def plot_index_size(study: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = study["index_rows"]
    for col, d in study["columns"].items():
        for k, style in (("1", "-o"), ("10", "--s")):
            if k not in d["micro"]:
                continue
            ax.errorbar(
                x,
                d["micro"][k],
                yerr=d["micro_std"][k],
                fmt=style,
                capsize=3,
                label=f"{col} P@{k}",
                markersize=4,
            )
    ax.set_xscale("log")
    ax.set_xlabel("index rows (stratified subsample)")
    ax.set_ylabel("modified precision (micro)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Index size ({study['seeds']} seed(s) per fraction; bars: std)")
    return _png(fig)


def plot_per_label(cm) -> str | None:
    p = cm.precision
    idx = [c for c in range(len(cm.vocab)) if p.per_label_queries[c] > 0]
    if not idx or len(idx) > MAX_BAR_LABELS:
        return None
    K = p.per_query.shape[1]
    plt = _plt()
    idx.sort(key=lambda c: p.per_label_mean[c, 0])
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(idx) + 1.2))
    y = np.arange(len(idx))
    ax.barh(y - 0.2, [p.per_label_mean[c, 0] for c in idx], height=0.4, label="P@1")
    if K >= 10:
        ax.barh(y + 0.2, [p.per_label_mean[c, 9] for c in idx], height=0.4, label="P@10")
    ax.set_yticks(y, [f"{cm.vocab[c]} ({p.per_label_queries[c]})" for c in idx], fontsize=7)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{cm.column}: modified precision per label (queries)")
    return _png(fig)


def plot_confusion(cm) -> str | None:
    from radsearch.evaluate.protocol import confusion_matrix

    if not cm.predictions or len(cm.vocab) > MAX_CONFUSION_LABELS:
        return None
    k = max(cm.predictions)
    mat = confusion_matrix(cm.true_codes, cm.predictions[k], len(cm.vocab))
    keep = np.flatnonzero((mat.sum(0) + mat.sum(1)) > 0)
    mat = mat[np.ix_(keep, keep)]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = mat / mat.sum(1, keepdims=True)
    names = [cm.vocab[c] for c in keep]
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.35 * n + 3, 0.35 * n + 2.5))
    ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if mat[i, j]:
                    ax.text(
                        j,
                        i,
                        str(mat[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("majority vote")
    ax.set_ylabel("true")
    ax.set_title(f"{cm.column}: {k}-NN majority vote (rows normalised)")
    return _png(fig)


def plot_map(map_data: dict, column: str) -> str:
    plt = _plt()
    xy = np.asarray(map_data["coords"])
    values = np.asarray(map_data["labels"][column], dtype=object)
    names = sorted(set(values.tolist()))
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, name in enumerate(names):
        m = values == name
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % cmap.N), label=name or "(none)")
    if len(names) <= 30:
        ax.legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{map_data['method'].upper()} map coloured by {column}")
    return _png(fig)


def thumbnail(ref, size: int = THUMB) -> str | None:
    """A small base64 JPEG of the item, or None if it cannot be read."""
    from PIL import Image

    from radsearch.errors import RadsearchError
    from radsearch.io.items import load_pixels

    try:
        img = Image.fromarray(load_pixels(ref))
    except (RadsearchError, OSError, ValueError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=70)
    return base64.b64encode(buf.getvalue()).decode()


def gallery_html(cm, nb, scores, index_refs, query_refs, n: int, hits_shown: int = 5) -> str:
    """The ``n`` queries with the lowest modified P@10 (then P@1), with their top hits."""
    p = cm.precision
    K = p.per_query.shape[1]
    q_rows = np.flatnonzero(p.scored)
    k10 = min(10, K) - 1
    order = np.lexsort((p.per_query[:, 0], p.per_query[:, k10]))[:n]
    col = cm.column
    parts = []
    for j in order:
        q = q_rows[j]
        qref = query_refs[q]
        truth = qref.metadata.get(col, "")
        cells = [_thumb_cell(qref, f"query: {truth}", None, "query")]
        for r in range(min(hits_shown, nb.shape[1])):
            row = int(nb[q, r])
            if row < 0:
                continue
            h = index_refs[row]
            lab = h.metadata.get(col, "")
            cells.append(
                _thumb_cell(
                    h, f"{r + 1}. {lab}", float(scores[q, r]), "ok" if lab == truth else "bad"
                )
            )
        parts.append(
            f'<div class="row"><div class="meta">P@1 {p.per_query[j, 0]:.2f} · P@{k10 + 1} '
            f"{p.per_query[j, k10]:.2f}<br><small>{html.escape(qref.id)}</small></div>{''.join(cells)}</div>"
        )
    return "\n".join(parts)


def _thumb_cell(ref, caption: str, score: float | None, kind: str) -> str:
    b64 = thumbnail(ref)
    img = _img(b64, ref.id, "jpeg") if b64 else '<div class="missing">unreadable</div>'
    s = "" if score is None else f"<br>{score:.3f}"
    return (
        f'<figure class="{kind}">{img}<figcaption>{html.escape(caption)}{s}</figcaption></figure>'
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.row{display:flex;align-items:flex-start;gap:6px;margin:6px 0;border-bottom:1px solid #eee;padding-bottom:6px}
.meta{width:170px;font-size:12px;word-break:break-all}
figure{margin:0;text-align:center;font-size:10px;width:86px}
figure img{border:3px solid #999;max-width:78px}figure.ok img{border-color:#2a2}figure.bad img{border-color:#d22}
figure.query img{border-color:#36c}.missing{width:72px;height:72px;background:#eee}
.plots img{max-width:100%}
"""


def _table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _overview(metrics: dict) -> list[str]:
    """Title, what was evaluated, and the P@k table with its curves."""
    ks = ["1", "3", "5", "10"]
    enc, ds, c = metrics["encoder"], metrics["dataset"], metrics["counts"]
    rows = [
        [col, avg] + [pk[avg].get(k) for k in ks]
        for col, pk in metrics["precision_at_k"].items()
        for avg in ("micro", "macro")
    ]
    return [
        f"<h1>radsearch evaluation: {html.escape(enc['name'])}</h1>",
        f"<p>Dataset <code>{html.escape(ds['csv'])}</code> (hash {ds['hash']}): index = "
        f"{c['index']} rows of split <b>{html.escape(ds['index_split'])}</b>, queries = {c['queries']} "
        f"rows of split <b>{html.escape(ds['query_split'])}</b>; dim {c['dim']}; exact cosine kNN, "
        f"k up to {c['k']}; recipe: {html.escape(json.dumps(metrics.get('recipe')))}.</p>",
        "<h2>Precision at k (the paper's modified P@k)</h2>",
        _table(["column", "average"] + [f"P@{k}" for k in ks], rows),
        '<div class="plots">' + _img(plot_pk(metrics), "P@k curves") + "</div>",
    ]


COLUMN_HEADER = [
    "column",
    "labels",
    "P@1 micro",
    "mAP@10",
    "recall@10",
    "kNN bal. acc.",
    "kNN macro F1",
    "probe acc.",
    "probe bal. acc.",
    "silhouette",
    "kNN purity",
]


def _column_row(metrics: dict, col: str) -> list:
    knn = metrics["knn_classification"][col]
    kv = max(knn, key=int) if knn else None
    probe = (metrics.get("linear_probe") or {}).get(col, {})
    q = (metrics.get("embedding_quality") or {}).get(col, {})
    return [
        col,
        metrics["label_counts"][col]["labels_in_index"],
        metrics["precision_at_k"][col]["micro"].get("1"),
        metrics["map_at_k"][col].get("10"),
        metrics["recall_at_k"][col].get("10"),
        knn[kv]["balanced_accuracy"] if kv else None,
        knn[kv]["macro_f1"] if kv else None,
        probe.get("accuracy"),
        probe.get("balanced_accuracy"),
        q.get("silhouette"),
        q.get("knn_purity"),
    ]


def _columns(metrics: dict) -> list[str]:
    """Every label column side by side, and the queries left out of the metrics."""
    sec = [
        "<h2>Anatomy versus pathology: every label column side by side</h2>",
        _table(COLUMN_HEADER, [_column_row(metrics, col) for col in metrics["precision_at_k"]]),
    ]
    absent = {
        k: v
        for k, v in metrics["absent_from_index"].items()
        if v["queries"] or v.get("unlabelled_queries")
    }
    if absent:
        sec.append(
            "<h3>Queries left out</h3><p>Their label never occurs in the index (or they have none), "
            "so no precision exists for them.</p>"
        )
        sec.append(
            _table(
                ["column", "queries", "unlabelled", "labels"],
                [
                    [k, v["queries"], v.get("unlabelled_queries", 0), ", ".join(v["labels"])]
                    for k, v in absent.items()
                ],
            )
        )
    return sec


def _studies(metrics: dict) -> list[str]:
    """Study search against its two baselines (``--study-column``; radsearch.evaluate.studies)."""
    if "study" not in metrics:
        return []
    from radsearch.evaluate.studies import report_rows

    note, header, rows = report_rows(metrics)
    return ["<h2>Studies as the unit of search</h2>", note, _table(header, rows)]


def _plots(metrics: dict, col_metrics: dict, map_data) -> list[str]:
    """Index size, per-label bars and confusion, the 2-D map, embedding quality."""
    sec = []
    if "index_size" in metrics:
        sec.append("<h2>Index size</h2>")
        plot = _img(plot_index_size(metrics["index_size"]), "index size")
        sec.append(f'<div class="plots">{plot}</div>')
    for col, cm in col_metrics.items():
        bars, conf = plot_per_label(cm), plot_confusion(cm)
        if bars or conf:
            sec.append(f"<h2>Per label: {html.escape(col)}</h2><div class='plots'>")
            sec += [_img(b, col) for b in (bars, conf) if b]
            sec.append("</div>")
    if map_data is not None:
        sec.append(
            f"<h2>Embedding space ({map_data['method'].upper()}, {len(map_data['coords'])} rows)</h2><div class='plots'>"
        )
        for col in list(dict.fromkeys([next(iter(col_metrics)), *map_data["labels"]]))[:3]:
            sec.append(_img(plot_map(map_data, col), col))
        sec.append("</div>")
    eq = metrics.get("embedding_quality")
    if eq:
        sec.append(
            f"<p>Embedding quality on {eq['sample']} rows: uniformity {eq['uniformity']:.4f}.</p>"
        )
        sec.append(
            _table(
                ["column", "silhouette (cosine)", "Davies-Bouldin", "kNN purity", "alignment"],
                [
                    [k, v["silhouette"], v["davies_bouldin"], v["knn_purity"], v["alignment"]]
                    for k, v in eq.items()
                    if isinstance(v, dict)
                ],
            )
        )
    return sec


def write_report(
    out: Path,
    metrics: dict,
    col_metrics: dict,
    nb,
    scores,
    index_refs,
    query_refs,
    map_data,
    gallery: int = 12,
    region_gallery: list | None = None,
) -> Path:
    """``out/report.html``: every plot and thumbnail embedded (one file to share)."""
    from radsearch.evaluate import report_regions

    regions = report_regions.regions_section(metrics, region_gallery)
    sec = _overview(metrics) + _columns(metrics) + _studies(metrics) + regions
    sec += _plots(metrics, col_metrics, map_data)
    if gallery and col_metrics:
        first = next(iter(col_metrics.values()))
        sec.append(
            f"<h2>Worst queries ({html.escape(first.column)})</h2><p>Blue: query; green/red: hit "
            "with the same/another label; number: cosine score.</p>"
        )
        sec.append(gallery_html(first, nb, scores, index_refs, query_refs, gallery))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>radsearch evaluation</title>"
        f"<style>{CSS + (report_regions.CSS if regions else '')}</style></head>"
        f"<body>{''.join(sec)}</body></html>"
    )
    path = Path(out) / "report.html"
    path.write_text(page)
    return path


def write_compare(runs: list[tuple[str, dict]], out: Path) -> tuple[Path, list[list]]:
    """One table (``compare.csv``) and one plot page (``compare.html``) for several runs."""
    ks = ["1", "3", "5", "10"]
    rows = []
    for name, m in runs:
        for col, pk in m["precision_at_k"].items():
            for avg in ("micro", "macro"):
                rows.append([name, m["encoder"]["name"], col, avg] + [pk[avg].get(k) for k in ks])
    header = ["run", "encoder", "column", "average"] + [f"P@{k}" for k in ks]
    out.mkdir(parents=True, exist_ok=True)
    import csv

    with open(out / "compare.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    plt = _plt()
    cols = list(dict.fromkeys(c for _, m in runs for c in m["precision_at_k"]))
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 4), squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        for name, m in runs:
            if col in m["precision_at_k"]:
                _curve(ax, m["precision_at_k"][col]["micro"], name)
        ax.set_xscale("log")
        ax.set_title(f"{col}: modified P@k (micro)")
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    png = _png(fig)
    (out / "compare.png").write_bytes(base64.b64decode(png))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>radsearch compare</title>"
        f"<style>{CSS}</style></head><body><h1>radsearch compare</h1>{_table(header, rows)}"
        f"<div class='plots'>{_img(png, 'compare')}</div></body></html>"
    )
    (out / "compare.html").write_text(page)
    return out / "compare.html", rows
