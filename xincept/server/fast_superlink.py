"""``flower-superlink`` whose API-specific middleware runs only on its own API's requests.

Every request to Flower's SuperLink (one HTTP server for the Fleet API the sites use, the Runtime API the ServerApp
uses and the Control API ``flwr`` uses) passes a stack of middlewares. Six of them act on one API only and pass
every other request straight on (each checks the request's path first): the Control API's authentication,
licence check, event log and no-cache headers, and the Fleet API's SuperNode authentication and event log. Each is
a Starlette
``BaseHTTPMiddleware``, which costs a task group and two memory streams per request even when it passes the
request on, and a federated round is about a hundred requests (object transfers and polls of three sites and the
ServerApp; bench/deployed.py): on a small coordinator the SuperLink's CPU, not the network, set the round time.

This wrapper runs Flower's own SuperLink entry point with those six middlewares wrapped in :class:`PathScoped`,
which sends a request through the middleware only when its path is in the middleware's API, and straight to the
next layer otherwise: for each of them exactly what the middleware itself would do (a Fleet request is still
authenticated by Flower's own code). Everything else (TLS, error translation, protobuf translation, the handlers)
is Flower's, unchanged.
Where the installed Flower's middleware list is not the one this was written for, the SuperLink runs as shipped
and a warning says so.

    python -m xincept.server.fast_superlink [flower-superlink options]
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("xincept.server.fast_superlink")  # not __name__: run as __main__ (python -m)

# middleware class name -> the path prefix of the one API it acts on (outside it, its dispatch only calls call_next)
SCOPES = {
    "ControlSensitiveResponseMiddleware": "/v1/control/",
    "ControlAuthenticationMiddleware": "/v1/control/",
    "ControlLicenseMiddleware": "/v1/control/",
    "ControlEventLogMiddleware": "/v1/control/",
    "FleetEventLogMiddleware": "/v1/fleet/",
    "NodeAuthMiddleware": "/v1/fleet/",  # authenticates SuperNodes' Fleet requests; passes every other request on
}


class PathScoped:
    """ASGI middleware: ``inner`` (a middleware class) handles requests under ``prefix``; others skip it."""

    def __init__(self, app: Any, inner: type, prefix: str, **kwargs: Any) -> None:
        self.app, self.prefix = app, prefix
        self.inner = inner(app, **kwargs)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)


def scoped_middleware(middleware: list) -> list:
    """Flower's middleware list with the API-specific layers of :data:`SCOPES` wrapped in :class:`PathScoped`."""
    from starlette.middleware import Middleware

    out = []
    for m in middleware:
        prefix = SCOPES.get(getattr(m.cls, "__name__", ""))
        out.append(Middleware(PathScoped, inner=m.cls, prefix=prefix, **m.kwargs) if prefix and not m.args else m)
    return out


def install(module: ModuleType | None = None) -> bool:
    """Scope the SuperLink's middlewares (``module``: ``flwr.superlink.main``); False, and nothing changed, where its
    middleware list lacks one of :data:`SCOPES` (another Flower release: its stack runs as shipped)."""
    if module is None:
        try:
            from flwr.superlink import main as module  # type: ignore[no-redef]
        except ImportError:
            return False
    get = getattr(module, "_get_middleware", None)
    if get is None or getattr(get, "_xincept_scoped", False):
        return False
    names = {getattr(m.cls, "__name__", "") for m in get()}
    if not set(SCOPES) <= names:
        return False

    def get_middleware() -> list:
        return scoped_middleware(get())

    get_middleware._xincept_scoped = True  # type: ignore[attr-defined]
    module._get_middleware = get_middleware  # type: ignore[attr-defined]
    return True


SEPARATE_SERVERAPP_ENV = "XINCEPT_SEPARATE_SERVERAPP"  # "1": Flower's SuperExec and flwr-serverapp process per run


def main() -> None:
    from xincept.common.cli import log_xincept_to_stderr
    from xincept.common.runtime_secret import write_runtime_secret
    from xincept.server import in_superlink

    log_xincept_to_stderr()
    if not install():
        log.warning("this Flower version's SuperLink middleware is not the one xincept scopes: it runs as shipped "
                    "(correct, only more CPU per request)")
    if os.environ.get(SEPARATE_SERVERAPP_ENV) == "1":
        log.info("the ServerApp runs in Flower's own flwr-serverapp process (--separate-serverapp)")
    elif in_superlink.install():
        # no SuperExec: the SuperLink's own thread runs the ServerApp and takes its task from the state directly; the
        # Runtime API's task hand-out (on the port the hospitals reach) then wants a secret nobody else holds, so no
        # one else can take the run's task and act as its ServerApp
        private = Path(tempfile.mkdtemp(prefix="xincept-superlink-"))
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        sys.argv += ["--isolation", "process", "--superexec-auth-secret-file", str(write_runtime_secret(private))]
        log.info("the ServerApp runs inside the SuperLink process with the installed xincept code")
    else:
        log.warning("this Flower version's SuperLink cannot run the ServerApp in-process: Flower's SuperExec starts a "
                    "flwr-serverapp process per run (more requests per round)")
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    sys.exit(flower_superlink())


if __name__ == "__main__":
    main()
