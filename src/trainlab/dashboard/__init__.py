"""The command center: a local, read-only web dashboard of every run in a store.

`create_app(store_or_url, allowed_hosts)` builds the ASGI app; `Server(app, bind(host, port))` serves
it; `trainlab dashboard` does both. See app.py for the API (api.py assembles its answers, cache.py
keeps rendered series) and security.py for the safety rules. Names are imported
on first use, so the command line reads the defaults below without importing the web stack.
"""

from trainlab._lazy import lazy

__all__ = ["create_app", "open_read_only", "Server", "bind", "allowed_hosts", "is_loopback", "DEFAULT_HOST",
           "DEFAULT_PORT"]

DEFAULT_HOST = "127.0.0.1"  # this machine only
DEFAULT_PORT = 8000

_WHERE = {"create_app": "app", "open_read_only": "app", "Server": "server", "bind": "server",
          "allowed_hosts": "server", "is_loopback": "server"}


__getattr__, __dir__ = lazy(__name__, _WHERE, __all__)
