"""Shared by the serve tests: a small real index of synthetic pattern images, a real
uvicorn server (the hardened configuration ``radsearch serve`` runs) in a thread, and
Debian's Chromium for the UI tests."""

from __future__ import annotations

import csv
import socket
import threading
import time
from pathlib import Path

from conftest import make_pattern

KINDS = ("stripes", "rings", "blob")
CHROMIUM = Path("/usr/bin/chromium")
# background networking would otherwise flood the closed network
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pattern_index(root: Path, meta, size: int = 96) -> Path:
    """``root/index`` over 4 images of each of ``KINDS`` (efficientnet-lite0, real
    embeddings); ``meta(kind, n)`` gives each image's manifest columns."""
    from PIL import Image

    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    (root / "img").mkdir(parents=True)
    rows = []
    for kind in KINDS:
        for n in range(4):
            rel = f"img/{kind}-{n}.png"
            Image.fromarray(make_pattern(kind, size=size, seed=n)).save(root / rel)
            rows.append({"filepath": rel, **meta(kind, n)})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = root / "index"
    build_index(iter_source(root / "manifest.csv"), out, progress=False, workers=0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``with LiveServer(app, **uvicorn_config options) as url:`` a real uvicorn server."""

    def __init__(self, app, **options):
        import uvicorn

        from radsearch.serve.server import uvicorn_config

        self.port = free_port()
        config = uvicorn_config(app, "127.0.0.1", self.port, log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def big_png16(path: Path, side: int = 7000) -> Path:
    """A 16-bit ``side`` x ``side`` PNG that compresses to ~100 KB (the memory case)."""
    import numpy as np
    from PIL import Image

    yy = np.arange(side, dtype=np.uint16)[:, None] // 64
    arr = np.broadcast_to(yy * 256, (side, side)).astype(np.uint16)
    Image.fromarray(arr).save(path)
    return path


def vm_kib(pid: int, field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak) of process ``pid`` in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class ServeProcess:
    """``radsearch serve INDEX`` as its own process (real CLI, real uvicorn)."""

    def __init__(self, index: Path, *args: str):
        self.port = free_port()
        self.argv = ["serve", str(index), "--port", str(self.port), "--log-level", "warning", *args]

    def __enter__(self) -> str:
        import os
        import subprocess
        import sys

        import httpx

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "radsearch.cli", *self.argv], env=env)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"radsearch serve exited with {self.proc.returncode}")
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("radsearch serve did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=20)


def launch_chromium():
    """``with launch_chromium() as browser:`` Playwright driving Debian's Chromium."""
    from contextlib import contextmanager

    from playwright.sync_api import sync_playwright

    @contextmanager
    def run():
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
            )
            try:
                yield browser
            finally:
                browser.close()

    return run()
