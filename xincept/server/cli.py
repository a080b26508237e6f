"""`xincept-server`: the coordinating side. Heavy imports happen inside commands."""

from __future__ import annotations

import typer

from xincept.server.cmd_centralized import centralized
from xincept.server.cmd_keys import keys
from xincept.server.cmd_simulate import simulate
from xincept.server.cmd_start import start

app = typer.Typer(
    name="xincept-server",
    help="XIncept-ALL coordinating server: centralized baseline and federated training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("centralized")(centralized)
app.command("simulate")(simulate)
app.command("start")(start)
app.command("keys")(keys)


@app.callback()
def _root() -> None:
    """XIncept-ALL coordinating server: centralized baseline and federated training."""


def main() -> None:
    app()
