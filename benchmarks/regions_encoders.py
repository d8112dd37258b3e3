"""What region features cost at index time, per encoder family, next to Lite0 in the same run.

For each ``--models`` entry (default: the offline encoders ``efficientnet-lite0`` (the
baseline), ``litemedsam`` and the fusion ``lite2+litemedsam``) builds an index of the
same fixed RadBench subset twice, with region features (the default) and with
``--no-regions``, and prints seconds for each, the region pass's share, images/s,
the grid and layer in the manifest, and bytes per item of the region store. Hub models
(``hf:DIR``, ``open_clip:DIR``, a checkpoint directory) work the same when their
weights are here. Without RadBench (or with ``--synthetic``) generated images are used.

    python benchmarks/regions_encoders.py [--limit 64] [--models A,B,...] [--synthetic]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encode import RADBENCH, subset, synthetic  # noqa: E402

DEFAULT_MODELS = "efficientnet-lite0,litemedsam,lite2+litemedsam"


def build(refs, out: Path, model: str, regions: bool) -> float:
    from radsearch.pipeline import build_index

    t0 = time.perf_counter()
    build_index(refs, out, model=model, progress=False, regions=regions)
    return time.perf_counter() - t0


def measure(refs, model: str, tmp: Path) -> dict:
    from radsearch.index import Index
    from radsearch.regions.features import require

    plain = build(refs, tmp / f"{model}-plain", model, regions=False)
    with_regions = build(refs, tmp / f"{model}-regions", model, regions=True)
    index = Index.open(tmp / f"{model}-regions")
    spec = index.manifest["regions"]
    return {
        "model": model,
        "plain_s": plain,
        "regions_s": with_regions,
        "layer": spec["layer"],
        "grid": "x".join(map(str, spec["grid"])),
        "channels": spec["channels"],
        "bytes": require(index).nbytes_per_item(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=64, help="images (fixed subset)")
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--synthetic", action="store_true", help="generated images, not RadBench")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if args.synthetic or not (RADBENCH / "radbench.csv").exists():
            refs, source = synthetic(args.limit, tmp / "images"), "synthetic"
        else:
            refs, source = subset(args.limit), "RadBench subset"
        print(f"{len(refs)} images ({source}); index with and without region features")
        print("model | layer | grid x channels | B/item | no regions s | regions s | region pass")
        base = None
        for model in args.models.split(","):
            r = measure(refs, model.strip(), tmp)
            extra = r["regions_s"] - r["plain_s"]
            base = base or extra
            print(
                f"{r['model']} | {r['layer']} | {r['grid']} x {r['channels']} | {r['bytes']:,} | "
                f"{r['plain_s']:.1f} | {r['regions_s']:.1f} | +{extra:.1f} s "
                f"({len(refs) / max(extra, 1e-9):.1f} img/s; {extra / max(base, 1e-9):.1f}x Lite0's)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
