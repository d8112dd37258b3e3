"""How the CLI prints search results: one printer for image hits, whether they come
from a plain search, a region search or hits grouped by study."""

from __future__ import annotations

import json


def print_suggestion(s: dict | None) -> None:
    if s:
        print(f"  suggestion: {s['column']}={s['value']} ({s['votes']} votes, {s['share']:.0%})")


def print_results(results, as_json: bool) -> int:
    """``--json``: ``{"queries": [...]}``; otherwise one line per hit (rank, score, id,
    metadata, ``match_box`` of region hits) and the suggestion. Returns the exit code."""
    if as_json:
        print(json.dumps({"queries": [r.to_dict() for r in results]}, indent=2))
        return 0
    for r in results:
        print(f"query: {r.query}")
        for h in r.hits:
            meta = " ".join(f"{k}={v}" for k, v in h.metadata.items() if v not in ("", None))
            if getattr(h, "match_box", None) is not None:
                meta += " match_box=" + ",".join(str(v) for v in h.match_box)
            print(f"  {h.rank:>3}  {h.score:.4f}  {h.id}  {meta}")
        print_suggestion(r.suggestion)
    return 0
