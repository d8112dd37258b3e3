"""Region features: point at the finding (region queries, match boxes, why-similar
maps) and relevance feedback, all on frozen encoders (docs/regions.md).

``features``: the compact per-item grid store kept in the index directory;
``geometry``: image pixels <-> encoder input <-> grid cells; ``query``: ROI search
with ``match_box``; ``explain``: patch similarity maps; ``feedback``: Rocchio
re-queries; ``evaluate``: the RadBench region metrics.
"""
