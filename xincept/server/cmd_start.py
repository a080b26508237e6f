"""`xincept-server start`: run the coordinating SuperLink and the federated training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import (RandomBackbonesOpt, VerboseOpt, friendly_errors, given_options, setting_option, setup_logging,
                                warn_random_weights)
from xincept.server.cmd_simulate import (ConfigOpt, DisclosureOpt, DpDeltaOpt, DpEpsilonOpt, DpModeOpt, DpStepsOpt, DpUnitOpt, EpochsOpt, SecureAggOpt, FedBackbonesOpt,
                                         FedInputSizeOpt, FreshOpt, MinCellOpt, ResumeOpt, RoundsOpt, StrategyOpt, XgbModeOpt)


@friendly_errors
def start(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (bundle, metrics, checkpoints, SuperLink state).")],
    rounds: RoundsOpt = None,
    local_epochs: EpochsOpt = None,
    strategy: StrategyOpt = None,
    xgb_mode: XgbModeOpt = None,
    min_sites: Annotated[int | None, setting_option("min_sites", "--min-sites", help="Sites that must join before training starts.")] = None,
    expect_sites: Annotated[int | None, setting_option("expect_sites", "--expect-sites", help="Sites to wait for (up to --join-timeout) before training starts; 0: --min-sites. Once started, the run goes on while --min-sites remain.")] = None,
    join_timeout: Annotated[float | None, setting_option("join_timeout", "--join-timeout", help="Seconds to wait for --expect-sites sites; then start with those joined, or exit non-zero if fewer than --min-sites.")] = None,
    round_timeout: Annotated[float | None, setting_option("round_timeout", "--round-timeout", help="Seconds to wait for the sites' replies to one message (a round, the embedding, the XGBoost phase); then stop naming the sites that did not answer.")] = None,
    tls_dir: Annotated[Path | None, typer.Option("--tls-dir", help="Folder with ca.crt, server.pem, server.key (see `xincept-server keys`).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS (testing only).")] = False,
    auth_keys: Annotated[Path | None, typer.Option("--auth-keys", help="Folder of registered SuperNode public keys (*.pub, from `xincept-server keys --site`): only those nodes may join.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 for all interfaces).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port the hospitals reach: Flower's Fleet API only (the Control and Runtime APIs are never served there).")] = 9092,
    control_port: Annotated[int, typer.Option("--control-port", help="The SuperLink's own port, on 127.0.0.1 only: the operator's flwr CLI and the ServerApp (0: a free port).")] = 0,
    max_request_mb: Annotated[float, typer.Option("--max-request-mb", help="Largest Fleet request body accepted on --port, in MB; larger ones are refused before they are read (a head message's object is about 1 MB).")] = 64.0,
    public_host: Annotated[str | None, typer.Option("--public-host", help="Name or IP sites use to reach this server (for XGBoost's tracker; default: --host).")] = None,
    no_pretrained: Annotated[bool, typer.Option("--no-pretrained", help="Sites use random backbone weights (recorded as a warning).")] = False,
    random_backbones: RandomBackbonesOpt = None,
    backbones: FedBackbonesOpt = None,
    input_size: FedInputSizeOpt = None,
    loso: Annotated[bool, typer.Option("--loso", help="Also train leave-one-site-out models and score each at its held-out site.")] = False,
    disclosure: DisclosureOpt = None,
    min_cell_count: MinCellOpt = None,
    dp_epsilon: DpEpsilonOpt = None,
    dp_delta: DpDeltaOpt = None,
    dp_mode: DpModeOpt = None,
    dp_unit: DpUnitOpt = None,
    dp_steps: DpStepsOpt = None,
    secure_aggregation: SecureAggOpt = None,
    resume: ResumeOpt = False,
    fresh: FreshOpt = False,
    config: ConfigOpt = None,
    separate_serverapp: Annotated[bool, typer.Option("--separate-serverapp", hidden=True, help="Accepted for old scripts: the ServerApp always runs in Flower's own flwr-serverapp process.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Start a Flower SuperLink, wait for hospital sites, train, and write OUT/model, OUT/metrics.json, OUT/report.md."""
    setup_logging(verbose)
    from xincept.common.errors import SettingError
    from xincept.common.fedconfig import FedSettings, load_settings_file
    from xincept.server.superlink import LinkOptions, run_server

    if insecure == (tls_dir is not None):
        raise SettingError("choose one of --tls-dir DIR (TLS, the default for deployments) or --insecure (testing only)")
    advertised = public_host or host
    if advertised in ("0.0.0.0", "::"):
        raise SettingError("--host listens on every interface: give --public-host NAME, the address sites use to reach this server")
    values = given_options(dict(rounds=rounds, local_epochs=local_epochs, strategy=strategy, min_sites=min_sites, expect_sites=expect_sites,
                                join_timeout=join_timeout, round_timeout=round_timeout, resume=resume, xgb_mode=xgb_mode, loso=loso, disclosure=disclosure,
                                min_cell_count=min_cell_count, dp_epsilon=dp_epsilon, dp_delta=dp_delta, backbones=backbones,
                                dp_mode=dp_mode, dp_unit=dp_unit, dp_steps=dp_steps,
                                secure_aggregation=secure_aggregation,
                                input_size=input_size))
    values.update(out_dir=str(out), public_host=advertised, insecure=insecure, xgb_tls_dir=str(tls_dir.resolve()) if tls_dir else "")
    if no_pretrained:
        values["pretrained"] = False
    if random_backbones:
        values["random_backbones"] = random_backbones
    settings = FedSettings.from_flat({**(load_settings_file(config) if config else {}), **values})
    from xincept.server.interrupt import claim_out_dir

    settings.run_config()  # backbone, head and split settings refused here, not at the sites after start-up
    claim_out_dir(out, settings.resume, fresh)
    warn_random_weights(settings.backbones, settings.pretrained, settings.random_backbones)
    metrics = run_server(settings, LinkOptions(host=host, port=port, tls_dir=tls_dir, insecure=insecure, auth_keys=auth_keys,
                                                 control_port=control_port, max_request_mb=max_request_mb))
    g = metrics["global"]
    typer.echo(f"federated accuracy {100 * g['accuracy']:.1f}% over {g['n']} held-out images at {len(metrics['sites'])} sites; "
               f"wrote {out / 'model'}, {out / 'metrics.json'}, {out / 'report.md'}")
