"""Load test for ``radsearch serve``: N concurrent clients for a fixed time.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [--clients 50] [--duration 20]
    python benchmarks/serve_load.py --index DIR        # starts (and stops) a server itself
    python benchmarks/serve_load.py --index DIR --compare --server-runtime onnx

Each client (a thread with its own keep-alive HTTP connection, plain ``http.client``
with request bodies encoded once, so the client takes little CPU from the server it
measures) posts query images to ``/api/search`` (or GETs ``--endpoint
health|info|image``) back to back until the time is up. Prints requests/s, latency
p50/p95/p99/max and the error count (any non-200 answer or transport error).
``--compare`` starts three servers side by side: one query at a time (``--batch-max
1``), batched (the default) and batched with ``--workers 2`` (``--compare-workers``),
alternates runs at 1, 10 and 50 clients, and prints them with the servers' resident
memory (summed over worker processes), each server's throughput over the unbatched
one, and the load average before and after (the machine is shared). Query images:
``--image`` files, else a few RadBench test images from ../shared/radbench, else a
synthetic pattern.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RADBENCH = REPO.parent / "shared" / "radbench"


class _Connection(http.client.HTTPConnection):
    """A keep-alive connection with Nagle's algorithm off, as browsers have it:
    ``http.client`` sends a body over 2,920 bytes apart from its headers, and with Nagle
    on, that second segment waits for the server's delayed ACK (about 40 ms a request)."""

    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def default_images(n: int = 8) -> list[tuple[str, bytes]]:
    csv_path = RADBENCH / "radbench.csv"
    if csv_path.exists():
        with open(csv_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("split") == "test"]
        step = max(1, len(rows) // n)
        picked = rows[::step][:n]
        return [(Path(r["filepath"]).name, (RADBENCH / r["filepath"]).read_bytes()) for r in picked]
    from PIL import Image

    yy, xx = np.mgrid[0:224, 0:224] / 224
    img = (0.5 + 0.5 * np.sin(2 * np.pi * 6 * np.hypot(xx - 0.5, yy - 0.5))) * 255
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
    return [("rings.png", buf.getvalue())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    index: str, token: str | None, threads: int | None, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "radsearch.cli",
        "serve",
        index,
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    if token:
        env["RADSEARCH_TOKEN"] = token
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/api/health", headers=headers, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit("server did not become ready in 120 s")


def multipart(fields: dict, file: tuple[str, bytes]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body (built once per image, not per request)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    name, data = file
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    parts += [data, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _requests(url, images, k, endpoint, headers) -> list[tuple[str, str, bytes | None, dict]]:
    """(method, path, body, headers) the clients cycle through."""
    import httpx

    if endpoint == "search":
        out = []
        for image in images:
            body, ctype = multipart({"k": k}, image)
            out.append(("POST", "/api/search", body, {**headers, "Content-Type": ctype}))
        return out
    if endpoint == "image":
        res = httpx.post(
            url + "/api/search",
            headers=headers,
            timeout=120,
            files={"file": images[0]},
            data={"k": "1"},
        ).json()
        path = f"/api/items/{quote(res['hits'][0]['id'], safe='')}/image?size=256"
        return [("GET", path, None, headers)]
    return [("GET", f"/api/{endpoint}", None, headers)]


def run_load(
    url: str,
    clients: int,
    duration: float,
    images,
    *,
    k: int = 10,
    endpoint: str = "search",
    token: str | None = None,
    warmup: float = 2.0,
) -> dict:
    """``clients`` threads, one keep-alive connection each, requests back to back.

    The client is plain ``http.client`` with request bodies encoded once: on a 2-core
    machine a heavier client (httpx, per-request multipart encoding) takes about a core
    from the server it measures.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    requests = _requests(url, images, k, endpoint, headers)
    where = urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    answered = [0] * clients  # warm-up included: the server's CPU time is over all of them
    start = threading.Barrier(clients + 1)
    window = {}

    def client(n: int) -> None:
        conn = _Connection(where.hostname, where.port, timeout=120)
        start.wait()
        i = n
        while time.perf_counter() < window["end"]:
            method, path, body, hdrs = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body, hdrs)
                r = conn.getresponse()
                text = r.read()
                why = None if r.status == 200 else f"HTTP {r.status}: {text[:120]!r}"
            except (OSError, http.client.HTTPException) as exc:
                why = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = _Connection(where.hostname, where.port, timeout=120)
            t1 = time.perf_counter()
            answered[n] += why is None
            if t0 >= window["measure"]:  # requests started during warm-up are not counted
                if why is None:
                    latencies[n].append(t1 - t0)
                else:
                    errors[n].append(why)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    window["measure"] = t_start + warmup
    window["end"] = t_start + warmup + duration
    start.wait()
    for t in threads:
        t.join()
    t_stop = time.perf_counter()
    lat = np.asarray([x for per in latencies for x in per]) * 1000
    errs = [e for per in errors for e in per]
    elapsed = t_stop - window["measure"]  # includes draining requests in flight at the end
    pct = (lambda q: round(float(np.percentile(lat, q)), 1)) if lat.size else (lambda q: None)
    return {
        "url": url,
        "endpoint": endpoint,
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "requests": int(lat.size),
        "requests_per_s": round(lat.size / elapsed, 2),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(float(lat.max()), 1) if lat.size else None,
        "errors": len(errs),
        "error_examples": sorted(set(errs))[:5],
        "answered": sum(answered),
    }


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers of ``--workers N``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` and its workers in MB, from /proc
    (summed: pages the workers share, such as the memory-mapped index, count per worker)."""
    rss = peak = 0.0
    for p in _tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                rss += int(value.split()[0]) / 1024
            elif key == "VmHWM":
                peak += int(value.split()[0]) / 1024
    return rss, peak


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its workers, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def _modes(args) -> dict[str, tuple[str, ...]]:
    common = ("--runtime", args.server_runtime)
    modes = {"unbatched": (*common, "--batch-max", "1"), "batched": common}
    if args.compare_workers > 1:
        modes[f"batched x{args.compare_workers}"] = (
            *common,
            "--workers",
            str(args.compare_workers),
        )
    return modes


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def compare(args, images) -> int:
    """Unbatched, batched (and batched with ``--workers``) at 1, 10 and 50 clients.

    All servers run for the whole comparison and the runs alternate (each server in
    turn at each client count), so drifting load on a shared machine hits all of them.
    """
    print(f"{os.cpu_count()} cores; before: {_load()}", flush=True)
    servers = {
        m: start_server(args.index, args.token, args.server_threads, extra)
        for m, extra in _modes(args).items()
    }
    rows = []
    try:
        for clients in args.compare_clients:
            for mode, (proc, url) in servers.items():
                cpu0 = _cpu_seconds(proc.pid)
                r = run_load(
                    url,
                    clients,
                    args.duration,
                    images,
                    k=args.k,
                    token=args.token,
                    warmup=args.warmup,
                )
                r["cpu_ms_per_request"] = round(
                    (_cpu_seconds(proc.pid) - cpu0) * 1000 / max(1, r["answered"]), 1
                )
                rows.append((mode, clients, r, *_rss_mb(proc.pid)))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=20)
    print(
        f"/api/search, {len(images)} query image(s), k={args.k}, {args.duration:g} s per run, "
        f"runtime {args.server_runtime}, server threads {args.server_threads or 'default'}; "
        f"after: {_load()}"
    )
    _print_table(rows)
    return 0 if all(r["errors"] == 0 for _, _, r, _, _ in rows) else 1


def _print_table(rows) -> None:
    print(
        f"{'server':<12} {'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'errors':>6} {'RSS MB':>7} {'peak MB':>8} {'CPU ms/req':>10}"
    )
    for mode, clients, r, rss, peak in rows:
        print(
            f"{mode:<12} {clients:>7} {r['requests_per_s']:>7} {r['p50_ms']:>8} "
            f"{r['p95_ms']:>8} {r['errors']:>6} {rss:>7.0f} {peak:>8.0f} "
            f"{r['cpu_ms_per_request']:>10}"
        )
    base = {c: r for m, c, r, _, _ in rows if m == "unbatched"}
    for mode, clients, r, _, _ in rows:
        if mode != "unbatched" and base[clients]["requests_per_s"]:
            gain = r["requests_per_s"] / base[clients]["requests_per_s"]
            lean = base[clients]["cpu_ms_per_request"] / max(r["cpu_ms_per_request"], 1e-9)
            print(
                f"  {clients} client(s): {mode} / unbatched throughput {gain:.2f}x, "
                f"CPU per request {lean:.2f}x less (the gain on a fixed share of the cores)"
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--index", help="start 'radsearch serve INDEX' on a free port for the run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=20, help="measured seconds (after warm-up)")
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--endpoint", default="search", choices=["search", "health", "info", "image"])
    ap.add_argument("--image", action="append", default=[], help="query image file (repeatable)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--token", default=os.environ.get("RADSEARCH_TOKEN"))
    ap.add_argument(
        "--server-threads", type=int, default=None, help="with --index: torch threads in the server"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument(
        "--server-runtime",
        default="torch",
        choices=["torch", "onnx", "auto"],
        help="with --compare: the servers' --runtime",
    )
    ap.add_argument(
        "--compare",
        action="store_true",
        help="with --index: unbatched vs batched server, at --compare-clients",
    )
    ap.add_argument(
        "--compare-clients",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[1, 10, 50],
        help="client counts for --compare (default 1,10,50)",
    )
    ap.add_argument(
        "--compare-workers",
        type=int,
        default=2,
        help="with --compare: also a batched server with --workers N (0: leave it out)",
    )
    args = ap.parse_args(argv)

    images = [(Path(p).name, Path(p).read_bytes()) for p in args.image] or default_images()
    if args.compare:
        if not args.index:
            ap.error("--compare needs --index (it starts the server twice)")
        return compare(args, images)
    proc = None
    url = args.url
    if args.index:
        proc, url = start_server(args.index, args.token, args.server_threads)
    try:
        result = run_load(
            url.rstrip("/"),
            args.clients,
            args.duration,
            images,
            k=args.k,
            endpoint=args.endpoint,
            token=args.token,
            warmup=args.warmup,
        )
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['endpoint']} at {result['url']}: {result['clients']} clients, "
            f"{result['duration_s']} s, {len(images)} query image(s)"
        )
        print(f"  requests   {result['requests']}  ({result['requests_per_s']} req/s)")
        print(
            f"  latency ms p50 {result['p50_ms']}  p95 {result['p95_ms']}  "
            f"p99 {result['p99_ms']}  max {result['max_ms']}"
        )
        print(f"  errors     {result['errors']}")
        for e in result["error_examples"]:
            print(f"    {e}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
