"""The dashboard's guard: which `Host` headers it answers, GET/HEAD only, and the security headers.

One ASGI middleware (`Guard`) around the app: the `Host` header must name an allowed host, else 400
(a page on another site that rebinds its DNS name to 127.0.0.1 gets nothing, the attack on MLflow's
server in CVE-2025-14279); any method but GET/HEAD gets 405; websockets are closed; responses say
`nosniff`, forbid framing and restrict scripts to this origin.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["LOOPBACK_HOSTS", "SECURITY_HEADERS", "AllowedHosts", "Guard"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]


class AllowedHosts:
    """The values the `Host` header may take: "name" (any port) or "name:port"; IPv6 in brackets ("[::1]").

    >>> "localhost:8000" in AllowedHosts(["localhost"])
    True
    """

    def __init__(self, hosts: Iterable[str]):
        if isinstance(hosts, str):
            hosts = [hosts]
        self.any_port: set[str] = set()
        self.exact: set[str] = set()
        for host in hosts:
            host = host.strip().lower()
            if not host:
                raise ValueError("allowed_hosts: empty host name")
            if re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+):[0-9]+", host):
                self.exact.add(host)
            else:
                self.any_port.add(host)
        if not self.any_port and not self.exact:
            raise ValueError("allowed_hosts: give at least one host, e.g. 127.0.0.1")

    def __contains__(self, header: str) -> bool:
        header = header.strip().lower()
        if header in self.exact:
            return True
        match = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(:[0-9]+)?", header)
        return match is not None and match.group(1) in self.any_port


class Guard:
    """ASGI middleware: Host header check (400), GET/HEAD only (405), security headers on every response.

    ``state`` is the wrapped app's, so ``Guard(app).state.store`` reads as ``app.state.store``.
    """

    def __init__(self, app: Any, allowed: AllowedHosts):
        self.app = app
        self.allowed = allowed
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1")
                break
        if host not in self.allowed:
            if scope["type"] != "http":
                return await send({"type": "websocket.close", "code": 1008})
            return await _reply(send, 400, f"host {host!r} is not allowed (DNS rebinding protection); "
                                           "open the address the dashboard printed")
        if scope["type"] != "http":
            return await send({"type": "websocket.close", "code": 1008})  # no websockets here
        if scope["method"] not in ("GET", "HEAD"):
            return await _reply(send, 405, f"method {scope['method']} not allowed: the dashboard only reads",
                                [(b"allow", b"GET, HEAD")])

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _reply(send, status: int, error: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers, *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
