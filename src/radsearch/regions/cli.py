"""CLI pieces of the region stage: ``--roi``/``--relevant``/``--irrelevant`` on
``search`` and the ``explain`` verb."""

from __future__ import annotations

import json
import sys


def add_region_args(p) -> None:
    g = p.add_argument_group("regions and feedback (docs/regions.md)")
    g.add_argument(
        "--roi",
        metavar="X0,Y0,X1,Y1",
        help="region query: pixel box of the query image (x1/y1 exclusive); hits get match_box",
    )
    g.add_argument(
        "--relevant",
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="relevance feedback: ids of hits that are right (repeatable; re-queries with them)",
    )
    g.add_argument(
        "--irrelevant",
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="relevance feedback: ids of hits that are wrong (repeatable)",
    )


def region_options(args) -> dict:
    """The ``Index.search`` keywords these options set (none when unused)."""
    from radsearch.regions.geometry import parse_box

    out = {}
    if getattr(args, "roi", None):
        out["roi"] = parse_box(args.roi)
    for name in ("relevant", "irrelevant"):
        ids = [
            i.strip() for v in getattr(args, name, None) or [] for i in v.split(",") if i.strip()
        ]
        if ids:
            out[name] = ids
    return out


def cmd_explain(args) -> int:
    from pathlib import Path

    from radsearch.errors import RadsearchError
    from radsearch.index import Index
    from radsearch.io.items import read_image
    from radsearch.regions.explain import explain

    if not args.out and not args.json:
        raise RadsearchError("explain: give --out PAIR.png and/or --json")
    index = Index.open(args.index)
    image = read_image(args.query)
    roi = region_options(args).get("roi")
    maps, png = explain(index, image, args.hit_id, roi)
    if args.out:
        Path(args.out).write_bytes(png)
        print(f"wrote {args.out}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(maps, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "explain", help="why similar: query and hit side by side with similarity maps"
    )
    p.add_argument("index", help="index directory (with region features)")
    p.add_argument("query", help="query image file")
    p.add_argument("hit_id", help="id of the hit to explain (as 'search' prints it)")
    p.add_argument("--roi", metavar="X0,Y0,X1,Y1", help="the query region (as for search --roi)")
    p.add_argument("--out", metavar="PAIR.png", help="write the side-by-side overlay PNG here")
    p.add_argument("--json", action="store_true", help="print both maps' grids and peaks")
    p.set_defaults(func=cmd_explain)
