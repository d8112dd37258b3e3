"""``radsearch index`` after ``evaluate``: the shared embedding cache against encoding again.

Takes ``--rows`` RadBench rows (brain MRI by default), embeds them once the way
``evaluate``/``tune`` do (into a fresh cache), then builds the same index twice in one
run, with the cache and with ``--no-cache``, with and without region features, and
prints the wall time of each, the speed-up, and the largest difference between the
reused and the freshly encoded vectors.

    python benchmarks/cache_reuse.py [--rows 460] [--dataset brain_tumor_mri]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from radsearch.evaluate.embeddings import compute_embeddings
from radsearch.index import Index
from radsearch.io.sources import iter_source
from radsearch.pipeline import build_index

RADBENCH = Path(__file__).resolve().parents[2] / "shared" / "radbench"
MODEL = "efficientnet-lite0"


def timed_build(refs, out: Path, cache, regions: bool) -> tuple[float, int, dict]:
    """Wall seconds, vectors reused, and ``{id: vector}`` of one fresh build."""
    start = time.perf_counter()
    report = build_index(refs, out, model=MODEL, progress=False, regions=regions, reuse_cache=cache)
    seconds = time.perf_counter() - start
    index = Index.open(out)
    ids = index.items.column("id").to_pylist()
    return seconds, report.reused, dict(zip(ids, np.asarray(index.embeddings), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=460)
    ap.add_argument("--dataset", default="brain_tumor_mri")
    args = ap.parse_args()
    refs = [
        r for r in iter_source(RADBENCH / "radbench.csv") if r.metadata["dataset"] == args.dataset
    ]
    refs = refs[: args.rows]
    with tempfile.TemporaryDirectory(prefix="cache-reuse-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        compute_embeddings(refs, MODEL, tmp / "cache", RADBENCH, progress=False)
        print(
            f"{len(refs)} {args.dataset} rows; evaluate's embedding pass: "
            f"{time.perf_counter() - start:.1f} s"
        )
        print(f"{'regions':<8} {'cache':<9} {'wall s':>7} {'reused':>7} {'speed-up':>9}")
        for regions in (False, True):
            runs = {}
            for name, cache in (("no-cache", None), ("cache", (tmp / "cache", RADBENCH))):
                out = tmp / f"idx-{regions}-{name}"
                runs[name] = timed_build(refs, out, cache, regions)
            base = runs["no-cache"][0]
            for name, (sec, reused, _) in runs.items():
                print(
                    f"{'on' if regions else 'off':<8} {name:<9} {sec:7.1f} {reused:7d} "
                    f"{base / sec:8.2f}x"
                )
            fresh, reused = runs["no-cache"][2], runs["cache"][2]
            diff = max(float(np.abs(fresh[i] - reused[i]).max()) for i in fresh)
            print(f"         max |reused - fresh| = {diff:.2e}")


if __name__ == "__main__":
    main()
