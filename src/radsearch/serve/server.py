"""Running the app under uvicorn so a hostile network cannot exhaust the server.

uvicorn's own settings give the concurrency limit (``limit_concurrency``: 503 beyond
it), the keep-alive timeout and the header-size cap (``h11_max_incomplete_event_size``).
Three things uvicorn leaves open are closed here on its h11 protocol:

- a **connection limit**: connections beyond ``max_connections`` are closed as they are
  accepted, so 20,000 idle sockets cannot use up the file handles;
- a **header timeout**: a connection must send complete request headers within
  ``header_timeout`` seconds of connecting (or of its previous response), however
  slowly it trickles bytes (slowloris);
- a **body timeout**: the body must arrive within ``body_timeout`` seconds.

Log lines are rate-limited per message (``RateLimitFilter``) so a flood of bad
connections cannot flood the log too.
"""

from __future__ import annotations

import logging
import resource
import threading
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from radsearch.serve import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS

MAX_HEADER_BYTES = 64 * 1024
# Loggers a flood can reach: uvicorn's, asyncio's (accept errors) and ours.
LIMITED_LOGGERS = (
    "uvicorn.error",
    "uvicorn.access",
    "asyncio",
    "radsearch.serve",
    "radsearch.io.upload",
)

log = logging.getLogger("radsearch.serve")


class RateLimitFilter(logging.Filter):
    """At most ``burst`` records per message template, then one per ``interval`` s.

    The next record let through after a suppression says how many were dropped.
    """

    def __init__(self, burst: int = 10, interval: float = 1.0):
        super().__init__()
        self.burst, self.interval = burst, interval
        self._state: dict[tuple[str, str], list] = {}  # key -> [tokens, last, suppressed]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            tokens, last, suppressed = self._state.get(key, [self.burst, now, 0])
            tokens = min(self.burst, tokens + (now - last) / self.interval)
            if tokens < 1:
                self._state[key] = [tokens, now, suppressed + 1]
                return False
            self._state[key] = [tokens - 1, now, 0]
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} similar line(s) suppressed)"
        return True


def limit_log_rate(burst: int = 10, interval: float = 1.0) -> None:
    """Attach one ``RateLimitFilter`` to each logger a flood can reach (idempotent)."""
    for name in LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(RateLimitFilter(burst, interval))


def guarded_protocol(max_connections: int, header_timeout: float, body_timeout: float) -> type:
    """uvicorn's h11 protocol with a connection limit and header/body deadlines."""

    class GuardedH11Protocol(H11Protocol):
        _deadline = None  # (phase, TimerHandle)

        def connection_made(self, transport) -> None:
            if len(self.server_state.connections) >= max_connections:
                log.warning(
                    "connection limit (%d) reached: refusing new connections", max_connections
                )
                self.transport = transport
                transport.close()
                return
            super().connection_made(transport)
            self._rearm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._rearm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._rearm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline[1].cancel()
                self._deadline = None

        def _rearm(self) -> None:
            """One deadline per phase: headers (state IDLE), then the body (SEND_BODY)."""
            state = self.conn.their_state
            phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            if self._deadline is not None and self._deadline[0] == phase:
                return  # trickling bytes does not extend a deadline
            self._disarm()
            if phase is not None and not self.transport.is_closing():
                seconds = header_timeout if phase == "headers" else body_timeout
                timer = self.loop.call_later(seconds, self._expired, phase, seconds)
                self._deadline = (phase, timer)

        def _expired(self, phase: str, seconds: float) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                log.info(
                    "closed a connection that sent no complete request %s within %gs",
                    phase,
                    seconds,
                )
                self.transport.close()

    return GuardedH11Protocol


def default_max_connections() -> int:
    """``DEFAULT_MAX_CONNECTIONS``, or half the process's file-handle limit if lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(8, min(DEFAULT_MAX_CONNECTIONS, soft // 2))


def uvicorn_config(
    app,
    host: str,
    port: int,
    *,
    max_connections: int | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    log_level: str = "info",
):
    """The hardened ``uvicorn.Config`` for ``app`` (see module docstring)."""
    import uvicorn

    limit = max_connections or default_max_connections()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        http=guarded_protocol(limit, header_timeout, body_timeout),
        limit_concurrency=limit + 1,  # its 503 counts this connection too
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    limit_log_rate()
    return config
