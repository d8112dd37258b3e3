"""``radsearch serve --workers N``: N processes on one port over one index answer with
the hits of a single process; a busy port or a bad count fails in one line."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import make_pattern  # noqa: E402
from serve_helpers import KINDS, ServeProcess, free_port, pattern_index  # noqa: E402


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return pattern_index(tmp_path_factory.mktemp("workers"), lambda kind, n: {"label": kind})


def _png(kind: str, seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_pattern(kind, seed=seed)).save(buf, format="PNG")
    return buf.getvalue()


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _search(url: str, body: bytes) -> list[tuple[str, float]]:
    with httpx.Client(timeout=120) as http:  # a fresh connection: any worker may take it
        r = http.post(url + "/api/search", files={"file": ("q.png", body)}, data={"k": "4"})
    assert r.status_code == 200, r.text
    return [(h["id"], h["score"]) for h in r.json()["hits"]]


def test_two_workers_serve_the_hits_of_one_process(index_dir):
    bodies = [_png(kind, seed) for seed in (30, 31) for kind in KINDS]
    with ServeProcess(index_dir) as url:
        single = [_search(url, b) for b in bodies]
    server = ServeProcess(index_dir, "--workers", "2")
    with server as url:
        assert len(_children(server.proc.pid)) == 2  # two serving processes
        with ThreadPoolExecutor(8) as pool:  # many connections, spread over both
            answers = list(pool.map(lambda i: _search(url, bodies[i % len(bodies)]), range(24)))
        workers = _children(server.proc.pid)
    for i, got in enumerate(answers):
        want = single[i % len(bodies)]
        assert [h for h, _ in got] == [h for h, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
    assert len(workers) == 2
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)  # stopped with it


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_fails_in_one_line(index_dir, workers):
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "radsearch.cli",
                "serve",
                str(index_dir),
                "--port",
                str(port),
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"radsearch: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_workers_below_one_is_refused(index_dir):
    r = subprocess.run(
        [sys.executable, "-m", "radsearch.cli", "serve", str(index_dir), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == "radsearch: error: --workers must be at least 1 (got 0)"


def test_connections_to_the_listening_socket_get_tcp_nodelay():
    """The server's responses are not held back by Nagle's algorithm: asyncio (so uvicorn)
    sets TCP_NODELAY only where the socket names its protocol, and a keep-alive client
    otherwise waits for a delayed ACK on every answer."""
    import asyncio

    from radsearch.serve.workers import _bound

    sock = _bound("127.0.0.1", 0, share=False)
    sock.listen()

    async def nodelay_of_accepted() -> int:
        got = []

        def on_connection(_reader, writer):
            accepted = writer.get_extra_info("socket")
            got.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await reader.read()  # until the server closes it
        writer.close()
        server.close()
        await server.wait_closed()
        return got[0]

    assert asyncio.run(nodelay_of_accepted()) == 1
