"""`xincept-server`: the coordinating side. Heavy imports happen inside commands."""

from __future__ import annotations

from xincept.common.cli import restore_interrupt, make_app
from xincept.server.cmd_centralized import centralized
from xincept.server.cmd_keys import keys
from xincept.server.cmd_simulate import simulate
from xincept.server.cmd_start import start

app = make_app("xincept-server", "XIncept-ALL coordinating server: centralized baseline and federated training.",
               {"centralized": centralized, "simulate": simulate, "start": start, "keys": keys})


def main() -> None:
    restore_interrupt()
    app()
