"""Serving the dashboard: bind a socket (loopback unless told otherwise), name the hosts it may be
reached by, run uvicorn on it.

The socket is bound before uvicorn starts, so port 0 picks a free port and the address printed (and
checked against the `Host` header) is the real one.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable

import uvicorn

from trainlab.dashboard.security import LOOPBACK_HOSTS

__all__ = ["is_loopback", "allowed_hosts", "bind", "url", "Server"]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """Host names a browser may use to reach a dashboard bound to ``host`` (any port), plus ``extra``.

    Loopback: 127.0.0.1, localhost, [::1] (and ``host`` itself). A wildcard (0.0.0.0, ::): those
    plus this machine's name and addresses. A specific address or name: that, the machine's names.
    """
    names = [_bracket(host.lower())]
    if not is_loopback(host):
        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
        if host in ("0.0.0.0", "::", ""):
            try:
                names += socket.gethostbyname_ex(socket.gethostname())[2]
            except OSError:
                pass
    if is_loopback(host) or host in ("0.0.0.0", "::", ""):
        names += list(LOOPBACK_HOSTS)
    names += [_bracket(h.lower()) for h in extra]
    return list(dict.fromkeys(n for n in names if n))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one. OSError if it cannot bind."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
    infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url(sock: socket.socket, host: str) -> str:
    """The address to open in a browser for a socket bound to ``host``."""
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else _bracket(host)
    return f"http://{shown}:{port}/"


class Server:
    """uvicorn serving ``app`` on a bound socket; `run()` blocks, `start()` runs it in a thread.

    >>> server = Server(app, bind("127.0.0.1", 0)).start()   # tests, benchmarks
    >>> server.stop()
    """

    def __init__(self, app, sock: socket.socket, *, log_level: str = "warning", access_log: bool = False):
        self.sock = sock
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log,
                                                     lifespan="off", timeout_graceful_shutdown=2))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def run(self) -> None:
        self._server.run(sockets=[self.sock])

    def start(self, timeout_s: float = 30.0) -> "Server":
        self._thread = threading.Thread(target=self.run, name="trainlab-dashboard", daemon=True)
        self._thread.start()
        for _ in range(int(timeout_s / 0.02)):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                raise RuntimeError("dashboard server exited while starting")
            threading.Event().wait(0.02)
        raise TimeoutError(f"dashboard server did not start in {timeout_s} s")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()
