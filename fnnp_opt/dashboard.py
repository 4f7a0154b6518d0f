"""optuna-dashboard over a study's storage and its artifact store."""

from __future__ import annotations

from typing import Callable

from fnnp_opt import storage as St
from fnnp_opt.errors import StorageError


def serve_dashboard(url: str, host: str, port: int, announce: Callable[[str], None] = lambda u: None) -> None:
    """Serve optuna-dashboard for an existing storage; blocks until interrupted."""
    import optuna_dashboard

    St.check_exists(url)
    storage = St.open_storage(url)
    try:
        server = optuna_dashboard.wsgi(storage)
        from wsgiref.simple_server import make_server

        httpd = make_server(host, port, server)
    except OSError as exc:
        raise StorageError(f"cannot serve on {host}:{port} ({exc.strerror}); pass another --port or --host") from None
    announce(f"http://{host}:{port}/")
    with httpd:
        httpd.serve_forever()
