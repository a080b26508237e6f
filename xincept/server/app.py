"""The Flower ServerApp: reads settings and runs the federation (xincept.server.federation)."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from xincept.common.atomic import write_json_atomic
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

        if settings is None:  # deployed (flwr-serverapp): the operator follows the rounds in `xincept-server start`'s output
            from xincept import flower_compat
            from xincept.common.cli import log_xincept_to_stderr
            from xincept.common.processes import exit_when_orphaned

            log_xincept_to_stderr()
            exit_when_orphaned()  # not one process left behind when the coordinator is killed
            flower_compat.apply("serverapp")  # the grid's object pulls: milliseconds, not Flower's 1 s, 2 s ... backoff
        run_settings = settings or FedSettings.from_flat(dict(context.run_config))
        status = Path(run_settings.out_dir) / "status.json"
        try:
            run_federation(grid, run_settings, classes)
            write_json_atomic(status, {"state": "finished"})
        except BaseException as exc:
            write_json_atomic(status, {"state": "failed", "error": str(exc), "type": type(exc).__name__})
            if errors is None:
                raise
            errors.append(exc)

    return app


app = make_server_app()
