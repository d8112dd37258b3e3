"""``radsearch search --study / --study-id / --group-by study`` (called by ``radsearch.cli``)."""

from __future__ import annotations

import json
import sys

from radsearch.cli_output import print_results, print_suggestion
from radsearch.errors import RadsearchError


def study_search(args, index) -> int:
    """Run the study options of ``radsearch search`` and print the results."""
    from radsearch.io.sources import parse_where

    if args.text:
        raise RadsearchError("--text cannot be combined with --study, --study-id or --group-by")
    options = {
        "where": parse_where(args.where) or None,
        "one_per_patient": args.one_per_patient,
        "suggest": args.suggest,
    }
    if not (args.study or args.study_id):
        return _grouped(args, index, options)
    from radsearch.studies.search import search_study, search_study_id

    if args.study and args.study_id:
        raise RadsearchError("give --study with query files or --study-id, not both")
    if args.study_id:
        if args.queries:
            raise RadsearchError("--study-id takes no query files")
        result = search_study_id(index, args.study_id, k=args.k, **options)
    else:
        result = search_study(index, list(args.study) + list(args.queries), k=args.k, **options)
    for f in result.skipped:
        print(
            f"radsearch: warning: {f['source']}: {f['reason']} (left out of the query study)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"queries": [result.to_dict()]}, indent=2))
        return 0
    print(f"query study: {result.query}")
    for s in result.studies:
        meta = " ".join(f"{k}={v}" for k, v in s.metadata.items() if v not in ("", None))
        print(f"  {s.rank:>3}  {s.score:.4f}  {s.study_id}  items={s.items}  {meta}")
        for p in s.pairs:
            print(f"         {p['score']:.4f}  {p['query_item']} ~ {p['hit_id']}")
    print_suggestion(result.suggestion)
    return 0


def _grouped(args, index, options) -> int:
    from radsearch.search import embed_queries
    from radsearch.studies.search import group_by_study

    if not args.queries:
        raise RadsearchError("--group-by study needs query images")
    names, qvecs = embed_queries(index, args.queries)
    results = group_by_study(index, qvecs, k=args.k, names=names, **options)
    return print_results(results, args.json)
