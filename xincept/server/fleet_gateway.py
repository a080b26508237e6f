"""The only thing on the port the hospitals reach: Flower's Fleet API, passed on to a SuperLink that listens on loopback.

Flower's SuperLink serves its Fleet API (the SuperNodes'), its Control API (``flwr run``, ``flwr stop``, ``flwr ls``,
``flwr supernode register``) and its Runtime API (the ServerApp's) on one HTTP port. Whoever reaches that port with
the public CA certificate can use all three: register a key, submit or stop runs, list them. ``xincept-server start``
therefore runs the SuperLink on 127.0.0.1 (``--control-port``) and this gateway on the hospitals' address
(``--host``/``--port``). The gateway terminates TLS with the server's certificate and forwards ``POST /v1/fleet/...``
requests, headers and bytes unchanged, to the SuperLink (over TLS, checked against the federation's CA), so Flower's
own SuperNode authentication still checks every request's signature. Every other path is answered 404 without
reaching the SuperLink.

Bounded resources: a request body larger than ``--max-request-mb`` is refused (413) from its declared length before
any of it is read, a body without a declared length is refused (411: Flower's SuperNodes always declare it), at most
``MAX_CONNECTIONS`` requests are served at once (503 beyond), and idle connections close after ``KEEP_ALIVE_S``.

    python -m xincept.server.fleet_gateway --listen HOST:PORT --upstream 127.0.0.1:PORT [--certfile F --keyfile F
        --ca-certfile F | --insecure] [--max-request-mb 64]
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from typing import Any

log = logging.getLogger("xincept.server.fleet_gateway")  # not __name__: run as __main__ (python -m)

FLEET_PREFIX = "/v1/fleet/"
DEFAULT_MAX_BODY_MB = 64  # the largest legitimate Fleet request is one object of a head message (about 1 MB)
MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 30
UPSTREAM_TIMEOUT_S = 120.0
# not passed on: hop-by-hop headers, and encodings (httpx decodes a compressed answer; the body goes on as decoded)
HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
              b"proxy-connection", b"content-length", b"accept-encoding", b"content-encoding"}
DEBUG_ENV = "XINCEPT_GATEWAY_DEBUG"  # "1": one log line per request (bench/deployed.py counts them)


class FleetGateway:
    """An ASGI app: Fleet API requests to ``upstream`` (a base URL), everything else 404."""

    def __init__(self, upstream: str, verify: ssl.SSLContext | bool, max_body: int) -> None:
        self.upstream, self.verify, self.max_body = upstream, verify, max_body
        self.client: Any = None
        self.debug = os.environ.get(DEBUG_ENV) == "1"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        if method != "POST" or not path.startswith(FLEET_PREFIX):
            await _answer(send, 404, b"not found: this port serves Flower's Fleet API only")
            return
        headers = [(k.lower(), v) for k, v in scope.get("headers", [])]
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is None or not declared.isdigit():
            await _answer(send, 411, b"a Fleet request must declare its Content-Length")
            return
        if int(declared) > self.max_body:
            await _answer(send, 413, b"request body too large")
            return
        body = await _read_body(receive, int(declared))
        if body is None:
            await _answer(send, 400, b"the body does not match its declared Content-Length")
            return
        if self.debug:
            log.info("request %s %d bytes", path, len(body))
        forward = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        try:
            res = await self.client.post(path, content=body, headers=forward)
        except Exception as exc:  # noqa: BLE001 (the SuperLink is restarting or gone: the SuperNode retries)
            log.warning("the SuperLink did not answer %s: %s", path, exc)
            await _answer(send, 502, b"the SuperLink is not reachable")
            return
        out = [(k.lower().encode(), v.encode()) for k, v in res.headers.items() if k.lower().encode() not in HOP_BY_HOP]
        out.append((b"content-length", str(len(res.content)).encode()))
        await send({"type": "http.response.start", "status": res.status_code, "headers": out})
        await send({"type": "http.response.body", "body": res.content})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        import httpx

        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(base_url=self.upstream, verify=self.verify,
                                                timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=10.0),
                                                limits=httpx.Limits(max_connections=MAX_CONNECTIONS))
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(receive: Any, declared: int) -> bytes | None:
    """The request body, or None when it is longer or shorter than declared (never more than ``declared`` bytes kept)."""
    chunks, size = [], 0
    while True:
        event = await receive()
        if event["type"] != "http.request":
            return None
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > declared:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            break
    return b"".join(chunks) if size == declared else None


async def _answer(send: Any, status: int, text: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": text})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m xincept.server.fleet_gateway", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT the hospitals reach")
    ap.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT")
    ap.add_argument("--certfile")
    ap.add_argument("--keyfile")
    ap.add_argument("--ca-certfile")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_BODY_MB)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import uvicorn

    host, _, port = args.listen.rpartition(":")
    if args.insecure:
        upstream, verify, tls = f"http://{args.upstream}", False, {}
    else:
        upstream, verify = f"https://{args.upstream}", ssl.create_default_context(cafile=args.ca_certfile)
        tls = {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile}
    app = FleetGateway(upstream, verify, int(args.max_request_mb * 1024 * 1024))
    log.info("Fleet API gateway on %s -> SuperLink %s (bodies up to %g MB)", args.listen, args.upstream, args.max_request_mb)
    uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning", access_log=False,
                limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=KEEP_ALIVE_S, lifespan="on", **tls)


if __name__ == "__main__":
    main()
