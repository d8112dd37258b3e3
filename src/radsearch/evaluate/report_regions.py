"""The report's "Regions" section (``evaluate --roi-csv``): region against whole-image
P@k, localisation, pointing game and feedback, and a gallery of region queries.

Boxes are drawn as SVG rectangles over the embedded thumbnail, in the image's own pixel
coordinates (the SVG's viewBox is the stored image's size), so nothing is burnt into
the thumbnail and every box stays exact at any zoom: blue, the query's box; orange, a
hit's ``match_box``; dashed green, the boxes the table gives the hit.
"""

from __future__ import annotations

import html

from radsearch.evaluate.report import _table, thumbnail

THUMB = 128
KS = ("1", "3", "5", "10")
CSS = """
.regions figure{width:136px}.regions svg{width:128px;height:128px;border:3px solid #999}
.regions figure.ok svg{border-color:#2a2}.regions figure.bad svg{border-color:#d22}
.regions figure.query svg{border-color:#36c}
rect.roi{fill:none;stroke:#36c}rect.match{fill:none;stroke:#f80}
rect.truth{fill:none;stroke:#2c2;stroke-dasharray:4 3}
"""


def _rect(kind: str, box, stroke: float) -> str:
    x0, y0, x1, y1 = (int(v) for v in box)
    return (
        f'<rect class="{kind}" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" '
        f'stroke-width="{stroke:.1f}"/>'
    )


def boxed_image(ref, size, rects: list[tuple[str, list]]) -> str:
    """The item's thumbnail with ``rects`` (kind, box in the item's pixels) drawn on it."""
    w, h = (int(v) for v in size)
    b64 = thumbnail(ref, THUMB)
    img = (
        f'<image href="data:image/jpeg;base64,{b64}" x="0" y="0" width="{w}" height="{h}" '
        'preserveAspectRatio="none"/>'
        if b64
        else f'<rect x="0" y="0" width="{w}" height="{h}" fill="#eee"/>'
    )
    stroke = max(w, h) / THUMB * 2  # about 2 screen pixels at the shown size
    boxes = "".join(_rect(kind, box, stroke) for kind, box in rects)
    return (
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(ref.id)}">'
        f"{img}{boxes}</svg>"
    )


def _hit_figure(rank: int, hit: dict) -> str:
    rects = [("truth", b) for b in hit["boxes"]] + [("match", hit["match_box"])]
    mark = "same label" if hit["same"] else "other label"
    caption = f"{rank}. {hit['label']} ({mark})"
    return (
        f'<figure class="{"ok" if hit["same"] else "bad"}">'
        f"{boxed_image(hit['ref'], hit['size'], rects)}"
        f"<figcaption>{html.escape(caption)}<br>{hit['score']:.3f}</figcaption></figure>"
    )


def gallery_html(gallery: list[dict]) -> str:
    """One row per region query: the query with its box, then its top hits."""
    parts = []
    for q in gallery:
        cells = [
            f'<figure class="query">{boxed_image(q["ref"], q["size"], [("roi", q["box"])])}'
            f"<figcaption>query: {html.escape(q['label'])}</figcaption></figure>"
        ]
        cells += [_hit_figure(i + 1, h) for i, h in enumerate(q["hits"])]
        parts.append(
            f'<div class="row"><div class="meta">box {html.escape(str(q["box"]))}<br>'
            f"<small>{html.escape(q['ref'].id)}</small></div>{''.join(cells)}</div>"
        )
    return "\n".join(parts)


def _tables(metrics: dict) -> list[str]:
    roi, fb = metrics["roi"], metrics["feedback"]["precision_at_10"]
    pk = [
        [name, avg] + [roi[key][avg].get(k) for k in KS]
        for name, key in (
            ("region query", "precision_at_k"),
            ("whole image, no box", "whole_image_precision_at_k"),
        )
        for avg in ("micro", "macro")
    ]
    loc = roi["localisation_at_k"]
    store = ", ".join(f"{k} {v}" for k, v in (roi.get("settings") or {}).items())
    return [
        f"<p>{roi['queries']} region queries (the boxes of the query split), each against "
        f"the index; the whole-image rows are the same query images without a box. Store: "
        f"{html.escape(store)}.</p>",
        _table(["query", "average"] + [f"P@{k}" for k in KS], pk),
        _table(
            ["localisation@1", "localisation@5", "localisation@10", "pointing game (top 5)"],
            [[loc.get("1"), loc.get("5"), loc.get("10"), metrics["explain"]["pointing_game"]]],
        ),
        "<p>Relevance feedback: P@10 of every query after 0, 1 and 2 rounds "
        "(the top 10 marked by their labels).</p>",
        _table(
            ["average", "round 0", "round 1", "round 2"],
            [[avg] + [fb[avg].get(r) for r in ("0", "1", "2")] for avg in ("micro", "macro")],
        ),
    ]


def regions_section(metrics: dict, gallery: list[dict] | None) -> list[str]:
    """The section's HTML parts; none when the evaluation had no ``--roi-csv``."""
    if "roi" not in metrics:
        return []
    sec = ['<section class="regions"><h2>Regions</h2>', *_tables(metrics)]
    if gallery:
        sec.append(
            f"<h3>Region queries and their top hits ({len(gallery)} queries: the first box of "
            "each label, then the second, ...)</h3><p>Blue: the query's box; orange: where the "
            "hit matched (<code>match_box</code>); dashed green: the hit's boxes in the table; "
            "frame green/red: same/other label; number: score.</p>"
        )
        sec.append(gallery_html(gallery))
    sec.append("</section>")
    return sec
