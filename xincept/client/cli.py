"""`xincept-client`: the hospital side. Heavy imports happen inside commands."""

from __future__ import annotations

from xincept.client.cmd_check import check
from xincept.client.cmd_explain import explain
from xincept.client.cmd_join import join
from xincept.client.cmd_predict import predict
from xincept.client.cmd_stage_weights import stage_weights
from xincept.client.cmd_verify_weights import verify_weights
from xincept.common.cli import restore_interrupt, make_app

app = make_app("xincept-client", "XIncept-ALL hospital client: check data, predict, explain, stage weights, join a federation.",
               {"check": check, "predict": predict, "explain": explain, "stage-weights": stage_weights,
                "verify-weights": verify_weights, "join": join})


def main() -> None:
    restore_interrupt()
    app()
