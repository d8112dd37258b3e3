"""``radsearch serve INDEX_DIR``: the HTTP API and web UI under uvicorn."""

from __future__ import annotations

import os

from radsearch.errors import RadsearchError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP API and web UI for an index")
    p.add_argument("index", help="index directory")
    _access_options(p.add_argument_group("access"))
    _limit_options(p.add_argument_group("limits on clients"))
    _performance_options(p.add_argument_group("query encoder and batching"))
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(func=cmd_serve)


def _access_options(p) -> None:
    """Who may connect and what answers may carry."""
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument(
        "--token",
        default=os.environ.get("RADSEARCH_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' on every /api call (default: $RADSEARCH_TOKEN)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests whose Host header is NAME (repeatable; '*': any); "
        "by default only loopback and the bound address (DNS-rebinding guard)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow cross-origin calls from ORIGIN (repeatable; default: none)",
    )
    p.add_argument(
        "--show-phi",
        action="store_true",
        help="return patient name, id and birth date (stripped by default)",
    )
    p.add_argument(
        "--show-paths",
        action="store_true",
        help="return each hit's 'source' file path (stripped by default)",
    )


def _limit_options(p) -> None:
    """Bounds on what one client can make the server do (hostile-client defences)."""
    from radsearch.io.upload import DEFAULT_DECODE_MEMORY
    from radsearch.serve import (
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_HEADER_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS,
        DEFAULT_MAX_K,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_BYTES,
    )

    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
        help="largest accepted upload in MiB (larger: 413)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="largest accepted query image in pixels (larger: 422)",
    )
    p.add_argument(
        "--max-k", type=int, default=DEFAULT_MAX_K, help="largest k a client may ask for"
    )
    p.add_argument(
        "--decode-memory-mb",
        type=float,
        default=DEFAULT_DECODE_MEMORY / 2**20,
        help="memory all query decodes together may use (larger: wait; one that cannot fit: 422)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections beyond this are closed at once "
        f"(default {DEFAULT_MAX_CONNECTIONS} or half the file-handle limit)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        help="seconds a connection has to send its request headers",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        help="seconds a request has to send its body",
    )


def _performance_options(p) -> None:
    """Where and how queries are embedded."""
    from radsearch.serve.batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW

    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the query encoder")
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx", "auto"],
        default="torch",
        help="query encoder runtime: torch (default: the hits of 'radsearch search' "
        "exactly), onnx or auto (ONNX Runtime when faithful: several times "
        "faster on the CPU, vectors within 1e-3 cosine)",
    )
    p.add_argument(
        "--batch-max",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="concurrent searches embedded together, at most (1: one at a time)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=DEFAULT_WINDOW * 1000,
        help="how long a batch waits for more queries once two are waiting",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the query encoder (torch or ONNX Runtime intra-op; "
        "default: every core, divided among --workers)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port and the memory-mapped index (default 1)",
    )


def cmd_serve(args) -> int:
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise RadsearchError(
            "serve needs FastAPI and uvicorn: pip install 'radsearch[serve]'"
        ) from None
    if args.workers < 1:
        raise RadsearchError(f"--workers must be at least 1 (got {args.workers})")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(
            f"radsearch: warning: serving on {args.host} without --token: anyone who can "
            "reach this address can search the index"
        )
    from radsearch.serve.workers import listening_sockets, run_workers

    if args.workers == 1:  # a busy port fails at once, not after loading
        return serve_process(args, listening_sockets(args.host, args.port, 1)[0])

    def serve_one(sock, number: int) -> int:
        return serve_process(args, sock, announce=number == 0)

    return run_workers(args.workers, args.host, args.port, serve_one)


def serve_process(args, sock, announce: bool = True) -> int:
    """One server process: load the index and encoder, then answer on ``sock``."""
    import uvicorn

    from radsearch.encoders.accel import cpu_threads
    from radsearch.serve.app import create_app
    from radsearch.serve.server import uvicorn_config

    threads = args.threads or max(1, cpu_threads() // args.workers)
    _one_thread_search()
    if args.runtime == "torch" and (args.threads or args.workers > 1):  # else torch's own
        import torch

        torch.set_num_threads(threads)
    app = create_app(
        args.index,
        token=args.token or None,
        show_phi=args.show_phi,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        max_k=args.max_k,
        cors_origins=args.cors_origin or None,
        device=args.device,
        show_paths=args.show_paths,
        host=args.host,
        allowed_hosts=args.allowed_host,
        decode_memory=int(args.decode_memory_mb * 2**20),
        batch_max=args.batch_max,
        batch_window=args.batch_window_ms / 1000,
        runtime=args.runtime,
        threads=threads,
    )
    idx = app.state.index
    if announce:
        workers = f", {args.workers} worker processes" if args.workers > 1 else ""
        print(
            f"radsearch: serving {idx.path} ({idx.count} items, encoder {idx.encoder_name}"
            f"{workers}) on http://{args.host}:{args.port}/"
            + (" (token required)" if args.token else ""),
            flush=True,
        )
    config = uvicorn_config(
        app,
        args.host,
        args.port,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        log_level=args.log_level,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _one_thread_search() -> None:
    """FAISS searches on one thread: the server's parallelism is its concurrent requests,
    and OpenMP hand-offs on busy cores cost more than the search itself (a flat search
    of 6,859 x 1280 measured 5 ms on one thread, 120 ms on two under load)."""
    import faiss

    faiss.omp_set_num_threads(1)
