"""`xincept-client join`: check the site's data, then serve it to the federation through a SuperNode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import CacheDirOpt, ClassesOpt, DataOpt, ManifestOpt, WeightsDirOpt, friendly_errors, setup_logging, split_names


@friendly_errors
def join(
    site: Annotated[str, typer.Option("--site", help="This hospital's name in the federation (unique).")],
    data: DataOpt,
    server: Annotated[str, typer.Option("--server", help="The SuperLink's HOST:PORT.")] = "127.0.0.1:9092",
    root_cert: Annotated[Path | None, typer.Option("--root-cert", help="CA certificate that signed the server's TLS certificate.")] = None,
    auth_key: Annotated[Path | None, typer.Option("--auth-key", help="This site's private node key (public key beside it as <key>.pub), registered at the server.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Connect without TLS (testing only).")] = False,
    tls_dir: Annotated[Path | None, typer.Option("--tls-dir", help="This site's ca.crt, client.pem, client.key for XGBoost's mutual TLS (from `xincept-server keys`).")] = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    manifest: ManifestOpt = None,
    classes: ClassesOpt = None,
    clientapp_port: Annotated[int, typer.Option("--clientapp-port", help="Local port of the SuperNode's ClientApp API (distinct per SuperNode on one machine).")] = 9094,
    max_retries: Annotated[int | None, typer.Option("--max-retries", help="Reconnection attempts before giving up (default: unlimited).")] = None,
    max_wait_time: Annotated[float | None, typer.Option("--max-wait-time", help="Seconds to keep trying to reconnect (default: unlimited).")] = None,
) -> None:
    """Check DATA like `xincept-client check`, then join the federation at SERVER as SITE (Ctrl-C leaves)."""
    setup_logging()
    import logging

    from xincept.client.supernode import NodeOptions, run_supernode
    from xincept.common.data import require_usable, scan_site
    from xincept.common.errors import SettingError

    log = logging.getLogger("xincept.join")
    if not insecure and root_cert is None:
        raise SettingError("--root-cert FILE is required for TLS (the CA certificate from the coordinating team), or pass --insecure for a test")
    if root_cert is not None and not root_cert.is_file():
        raise SettingError(f"--root-cert {root_cert} does not exist")
    if auth_key is not None and not (auth_key.is_file() and Path(f"{auth_key}.pub").is_file()):
        raise SettingError(f"--auth-key {auth_key}: the private key and {auth_key}.pub must both exist (create them with `xincept-server keys`)")
    site_data = scan_site(data, split_names(classes), manifest)
    require_usable(site_data)
    r = site_data.report
    log.info("site %s: %d images in %d classes, %d groups, %d skipped; only weights and aggregate counts leave this site",
             site, r.n_images, len(r.classes), r.n_groups, len(r.skipped))
    code = run_supernode(NodeOptions(site=site, data=data, server=server, root_cert=root_cert, insecure=insecure, auth_key=auth_key,
                                     cache_dir=cache_dir, weights_dir=weights_dir, manifest=manifest, clientapp_port=clientapp_port, tls_dir=tls_dir,
                                     max_retries=max_retries, max_wait_time=max_wait_time))
    raise typer.Exit(code)
