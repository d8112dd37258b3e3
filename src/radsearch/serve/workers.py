"""``radsearch serve --workers N``: N server processes on one port over one index.

The parent opens N listening sockets on the port with ``SO_REUSEPORT`` (so a port in
use fails at once, in the parent, with one clear line), then forks one worker per
socket before anything heavy is loaded: no threads exist yet, so the fork is safe.
Each worker opens the index itself (FAISS memory-mapped read-only: the vectors' pages
are shared through the page cache, not copied), loads its own encoder and runs its own
batcher and uvicorn; the kernel spreads incoming connections over the sockets (one
that reaches a worker still loading waits for it). The parent only waits: SIGINT and
SIGTERM stop every worker, and a worker that exits stops the others (no respawn: a
crash is a bug to see, not to hide).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback

from radsearch.errors import RadsearchError

BACKLOG = 2048  # uvicorn's default


def _bound(host: str, port: int, share: bool) -> socket.socket:
    """The listening socket. Its protocol is named (``IPPROTO_TCP``, not 0): asyncio sets
    ``TCP_NODELAY`` only on connections whose socket says TCP, and without it a
    keep-alive client waits for a delayed ACK (about 40 ms) on every response."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RadsearchError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def listening_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` listening TCP sockets on ``host:port`` (sharing it by ``SO_REUSEPORT``).

    A plain bind first: ``SO_REUSEPORT`` alone would silently join another server
    already listening there instead of failing. One socket (``n=1``) is a plain one.
    """
    plain = _bound(host, port, share=False)
    if n == 1:
        socks = [plain]
    else:
        plain.close()
        socks = [_bound(host, port, share=True) for _ in range(n)]
    for sock in socks:
        sock.listen(BACKLOG)
    return socks


def _worker(number: int, sock: socket.socket, serve_one) -> int:
    """Run ``serve_one(sock, number)`` in a forked worker; its exit status."""
    try:
        return int(serve_one(sock, number) or 0)
    except RadsearchError as exc:
        if number == 0:  # every worker fails alike: one line, not N
            print(f"radsearch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException:  # a bug: show it
        traceback.print_exc()
        return 1


def run_workers(n: int, host: str, port: int, serve_one) -> int:
    """Fork ``n`` workers, each calling ``serve_one(sock, number)``; wait for them."""
    socks = listening_sockets(host, port, n)
    pids: dict[int, int] = {}
    for number, sock in enumerate(socks):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            for other in socks:
                if other is not sock:
                    other.close()
            os._exit(_worker(number, sock, serve_one))
        pids[pid] = number
    for sock in socks:
        sock.close()
    return _supervise(pids)


def _supervise(pids: dict[int, int]) -> int:
    """Wait for the workers; a signal or the first exit stops all of them."""
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while pids:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        pids.pop(pid, None)
        status = os.waitstatus_to_exitcode(status)
        if not stopping:
            code = status or 1  # a worker ended by itself: stop the rest
            stop()
        elif status not in (0, -signal.SIGTERM):
            code = code or status
    return code if code >= 0 else 1
