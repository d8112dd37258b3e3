"""The outermost ASGI layer of ``radsearch serve``: checks made before FastAPI runs.

- ``Host`` must name this server (DNS rebinding: a web page on ``evil.example`` that
  re-points its name at 127.0.0.1 sends ``Host: evil.example``, so a server on a
  reader's workstation refuses it);
- the bearer token on every ``/api`` request;
- the request-body cap, on ``Content-Length`` and again while streaming;
- security headers on every answer.

Refusals happen before anything is parsed or buffered.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
CSP = (
    b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
    b"style-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
# In an allowed-host set: any IP literal is accepted (a rebinding page is always a name).
ANY_IP = "<ip>"


def allowed_hosts_for(bind_host: str, extra=()) -> frozenset[str]:
    """Host names a request may carry: loopback, the bound address, ``extra``.

    Bound to every interface, clients reach the server by this machine's names or any
    of its addresses, so those are accepted too. ``*`` in ``extra`` accepts any host.
    """
    names = {*LOOPBACK_NAMES, bind_host.strip("[]").lower()}
    if bind_host in WILDCARD_BINDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower(), ANY_IP}
    names |= {h.strip().strip("[]").lower().rstrip(".") for h in extra if h.strip()}
    return frozenset(names - {""})


def _host_name(value: bytes) -> str:
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.rpartition(":")[0]
    return host.rstrip(".")


def host_allowed(value: bytes | None, allowed: frozenset[str]) -> bool:
    if value is None or "*" in allowed:
        return True  # no Host header: not a browser, so not a rebinding attack
    name = _host_name(value)
    if name in allowed:
        return True
    if ANY_IP in allowed:
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


async def send_json(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


class Guard:
    """Host check, bearer token on ``/api``, request-body cap, security headers."""

    def __init__(self, app, token: str | None, max_body: int, allowed_hosts: frozenset[str]):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.allowed_hosts = allowed_hosts

    def _authorised(self, scope) -> bool:
        value = _header(scope, b"authorization")
        if value is None:
            return False
        scheme, _, cred = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self.token)

    def _refusal(self, scope) -> tuple[int, str, list] | None:
        host = _header(scope, b"host")
        if not host_allowed(host, self.allowed_hosts):
            shown = _host_name(host)[:100]
            return (
                400,
                (
                    f"Host {shown!r} is not served here (start the server with "
                    f"--allowed-host {shown} to allow it)"
                ),
                [],
            )
        path = scope.get("path", "")
        is_api = path == "/api" or path.startswith("/api/")
        if is_api and self.token is not None and scope.get("method") != "OPTIONS":
            if not self._authorised(scope):
                return (
                    401,
                    ("missing or wrong bearer token (send 'Authorization: Bearer <token>')"),
                    [(b"www-authenticate", b'Bearer realm="radsearch"')],
                )
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                return 400, "bad Content-Length header", []
            if too_big:
                return 413, self._too_big(), [(b"connection", b"close")]
        return None

    def _too_big(self) -> str:
        return f"request body too large (limit {self.max_body} bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = list(SECURITY_HEADERS)
        if not scope.get("path", "").startswith(("/docs", "/redoc")):
            extra.append((b"content-security-policy", CSP))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in extra if k not in have
                ]
            await send(message)

        refusal = self._refusal(scope)
        if refusal:
            return await send_json(send, *refusal)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send_with_headers)
        await self._capped(scope, receive, send_with_headers)

    async def _capped(self, scope, receive, send):
        """Run the app with the body cut off (413) once it passes ``max_body``."""
        state = {"seen": 0, "over": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_body:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not state["over"]:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"]:
            await send_json(send, 413, self._too_big(), [(b"connection", b"close")])
