"""The Flower ServerApp: reads settings and runs the federation (xincept.server.federation)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from xincept.common.fedconfig import FedSettings

log = logging.getLogger(__name__)


def make_server_app(settings: FedSettings | None = None, classes: list[str] | None = None,
                    errors: list[BaseException] | None = None) -> ServerApp:
    """A ServerApp; without ``settings`` they come from the run config (``flwr run`` deployments).

    ``errors`` collects an exception raised by the run, so the caller can report it (simulation).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from xincept.server.federation import run_federation

        try:
            run_federation(grid, settings or FedSettings.from_flat(dict(context.run_config)), classes)
        except BaseException as exc:
            if errors is None:
                raise
            errors.append(exc)

    return app


app = make_server_app()
