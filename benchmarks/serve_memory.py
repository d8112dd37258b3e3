"""Peak memory of ``radsearch serve`` decoding a hostile-but-legal upload.

    python benchmarks/serve_memory.py [--index DIR] [--side 7000]

The case: a 16-bit ``side`` x ``side`` PNG that compresses to ~100 KB, under the pixel
cap. Prints, in one run, the peak RSS (``VmHWM``) of a real ``radsearch serve`` over its
warm idle peak after one such upload and after four at once, and, as the baseline, the
peak of decoding the same file at full resolution (the readers' path that uploads took
before ``radsearch.io.upload`` reduced them on load) in a fresh process. Without
``--index``, a small index of synthetic images is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import start_server  # noqa: E402

_FULL_DECODE = """
import resource, sys
from radsearch.io.items import read_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
read_image(sys.argv[1])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def _png16(path: Path, side: int) -> Path:
    from PIL import Image

    rows = (np.arange(side, dtype=np.uint16)[:, None] // 64) * 256
    Image.fromarray(np.broadcast_to(rows, (side, side)).astype(np.uint16)).save(path)
    return path


def _tiny_index(folder: Path) -> Path:
    from PIL import Image

    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    for n in range(8):
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(
            folder / f"img/{n}.png"
        )
    build_index(iter_source(folder / "img"), folder / "index", progress=False, workers=0)
    return folder / "index"


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--index", help="index to serve (default: a small synthetic one)")
    ap.add_argument("--side", type=int, default=7000, help="width and height of the PNG")
    args = ap.parse_args(argv)
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        png = _png16(tmp / "big16.png", args.side)
        index = args.index or str(_tiny_index(tmp))
        full = float(
            subprocess.run(
                [sys.executable, "-c", _FULL_DECODE, str(png)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        proc, url = start_server(index, None, None)
        try:

            def post(name, data):
                r = httpx.post(
                    url + "/api/search", files={"file": (name, data)}, data={"k": "5"}, timeout=300
                )
                return r.status_code

            small = io.BytesIO()
            from PIL import Image

            Image.fromarray(np.full((96, 96), 90, np.uint8)).save(small, format="PNG")
            assert post("warm.png", small.getvalue()) == 200
            idle = _peak_mb(proc.pid)
            data = png.read_bytes()
            one_status = post("big16.png", data)
            one = _peak_mb(proc.pid)
            with ThreadPoolExecutor(4) as pool:
                four_status = list(pool.map(lambda _: post("big16.png", data), range(4)))
            four = _peak_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    print(
        f"16-bit {args.side}x{args.side} PNG, {len(data) / 1024:.0f} KiB "
        f"({args.side**2 / 1e6:.0f} Mpx, pixel cap 50 Mpx)"
    )
    rows = [
        ("full-resolution decode (baseline, fresh process)", f"+{full:.0f} MB peak"),
        ("radsearch serve, warm idle peak", f"{idle:.0f} MB"),
        (f"one upload (HTTP {one_status})", f"+{one - idle:.0f} MB over idle"),
        (f"four at once (HTTP {sorted(set(four_status))})", f"+{four - idle:.0f} MB over idle"),
    ]
    for label, value in rows:
        print(f"  {label:<52} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
