"""`xincept-client`: the hospital side. Heavy imports happen inside commands."""

from __future__ import annotations

import typer

from xincept.client.cmd_check import check
from xincept.client.cmd_join import join
from xincept.client.cmd_predict import predict
from xincept.client.cmd_stage_weights import stage_weights

app = typer.Typer(
    name="xincept-client",
    help="XIncept-ALL hospital client: check data, predict, stage weights, join a federation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("check")(check)
app.command("predict")(predict)
app.command("stage-weights")(stage_weights)
app.command("join")(join)


def main() -> None:
    app()
