"""`trainlab dashboard`: serve the command center over a store, read-only, on 127.0.0.1 by default."""

from __future__ import annotations

import sys

from trainlab.cli.common import UsageError, out, print_json

__all__ = ["add_dashboard"]


def cmd_dashboard(args) -> int:
    from trainlab.dashboard import Server, allowed_hosts, bind, create_app, is_loopback
    from trainlab.dashboard.server import url

    app = create_app(args.db, allowed_hosts(args.host, args.allow_host))
    try:
        sock = bind(args.host, args.port)
    except OSError as err:
        raise UsageError(f"--host/--port: cannot listen on {args.host} port {args.port}: {err.strerror or err}") from None
    address = url(sock, args.host)
    if args.json:
        print_json({"url": address, "store": repr(app.state.store)})
    else:
        out(address)
    if not args.quiet:
        print(f"trainlab dashboard: {address}  ({app.state.store!r}, read-only; Ctrl+C stops)", file=sys.stderr,
              flush=True)
    if not is_loopback(args.host):
        print(f"trainlab dashboard: warning: listening on {args.host}, beyond this machine, with no "
              "authentication: anyone who can reach this port can read every run in the store",
              file=sys.stderr, flush=True)
    Server(app, sock, log_level=args.log_level).run()
    return 0


def add_dashboard(p) -> None:
    from trainlab.dashboard import DEFAULT_HOST, DEFAULT_PORT

    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another host name the browser may use (a proxy or tunnel name); repeatable")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: warning)")
    p.set_defaults(fn=cmd_dashboard)
