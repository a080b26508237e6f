"""The SuperLink wrapper skips an API-specific middleware only for requests outside that API."""

from __future__ import annotations

import asyncio
import inspect
import types
from pathlib import Path

from xincept.server import fast_superlink as fsl


class Recorder:
    """A stand-in middleware: records that it saw the request, then passes it on."""

    def __init__(self, app, tag: str = "inner") -> None:
        self.app, self.tag = app, tag

    async def __call__(self, scope, receive, send) -> None:
        scope.setdefault("seen", []).append(self.tag)
        await self.app(scope, receive, send)


async def _endpoint(scope, receive, send) -> None:
    scope.setdefault("seen", []).append("endpoint")


def test_a_scoped_middleware_sees_only_its_own_apis_requests() -> None:
    layer = fsl.PathScoped(_endpoint, inner=Recorder, prefix="/v1/control/", tag="control-auth")
    for path, expected in (("/v1/control/start-run", ["control-auth", "endpoint"]), ("/v1/fleet/pull-object", ["endpoint"]),
                           ("/v1/runtime/pull-messages", ["endpoint"])):
        scope = {"type": "http", "path": path}
        asyncio.run(layer(scope, None, None))
        assert scope["seen"] == expected, path
    lifespan = {"type": "lifespan"}  # not a request: the middleware decides, as it would unwrapped
    asyncio.run(layer(lifespan, None, None))
    assert lifespan["seen"] == ["control-auth", "endpoint"]


def test_install_scopes_flowers_api_specific_middleware_and_keeps_the_rest() -> None:
    from flwr.superlink import main as superlink_main

    original = superlink_main._get_middleware
    module = types.SimpleNamespace(_get_middleware=original)
    assert fsl.install(module)
    assert not fsl.install(module)  # once
    before = [m.cls.__name__ for m in original()]
    after = module._get_middleware()
    assert len(after) == len(before)
    for name, m in zip(before, after):
        if name in fsl.SCOPES:
            assert m.cls is fsl.PathScoped and m.kwargs["inner"].__name__ == name and m.kwargs["prefix"] == fsl.SCOPES[name]
        else:  # error translation, protobuf translation: every request, as shipped
            assert m.cls.__name__ == name
    assert not fsl.install(types.SimpleNamespace(_get_middleware=lambda: []))  # another Flower: runs as shipped


def test_each_scoped_middleware_itself_passes_other_apis_requests_on() -> None:
    """Fails when a Flower upgrade makes one of them act on other paths too: scoping it would then change behaviour."""
    from flwr.superlink.routers.control import middlewares as control
    from flwr.superlink.routers.fleet import middlewares as fleet
    from flwr.superlink.routers.fleet import node_auth

    classes = {c.__name__: c for mod in (control, fleet, node_auth) for c in vars(mod).values() if isinstance(c, type)}
    for name, prefix in fsl.SCOPES.items():
        src = inspect.getsource(classes[name].dispatch)
        if prefix == "/v1/control/" and name != "ControlSensitiveResponseMiddleware":
            assert "_is_control_path(request.url.path)" in src, name
        elif name == "ControlSensitiveResponseMiddleware":  # adds headers only to sensitive Control routes
            assert "_is_control_sensitive_route(request)" in src
            assert all(key[1].startswith("/v1/control/") for key in control.CONTROL_SENSITIVE_ROUTE_KEYS)
        else:
            assert 'request.url.path.startswith("/v1/fleet/")' in src, name
    assert inspect.getsource(control._is_control_path).count('"/v1/control/"') == 1


def test_the_server_starts_flowers_superlink_through_the_wrapper(tmp_path: Path) -> None:
    from xincept.server.superlink import LinkOptions, superlink_command

    cmd = superlink_command(LinkOptions(insecure=True), tmp_path)
    assert cmd[1:3] == ["-m", "xincept.server.fast_superlink"] and "--insecure" in cmd
