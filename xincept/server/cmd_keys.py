"""`xincept-server keys`: create a CA, the server certificate and SuperNode key pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import friendly_errors, setup_logging


@friendly_errors
def keys(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for ca.crt, server.pem, server.key.")],
    host: Annotated[list[str], typer.Option("--host", help="Server host name or IP the certificate is valid for (repeatable).")] = ["127.0.0.1", "localhost"],  # noqa: B006
    site: Annotated[list[str], typer.Option("--site", help="Create a SuperNode key pair for this site in OUT/nodes (repeatable).")] = [],  # noqa: B006
    nodes_only: Annotated[bool, typer.Option("--nodes-only", help="Only create node keys (keep the existing CA and server certificate).")] = False,
) -> None:
    """Create the CA, the server certificate and SuperNode keys for a pilot federation (or use your organisation's PKI)."""
    setup_logging()
    from xincept.common.site_names import valid_site_name
    from xincept.common.tls import CA_KEY, make_certificates, make_node_keys, make_site_certificates

    names = [valid_site_name(s) for s in site]
    if not nodes_only:
        files = make_certificates(out, list(host))
        for name, path in files.items():
            typer.echo(f"{name}: {path}", err=True)
        typer.echo(f"give each site {files['ca']} (--root-cert); keep {files['key']} private to the server and "
                   f"{files['ca_key'].parent} offline with the coordinating team (never mount it into the server)", err=True)
    if names:
        for name, path in make_node_keys(out / "nodes", names).items():
            typer.echo(f"node key {name}: {path} (private: to that site only) and {path}.pub (registered at the server)", err=True)
        if (out / CA_KEY).is_file():
            for name, folder in make_site_certificates(out, names).items():
                typer.echo(f"XGBoost client certificate {name}: {folder} (to that site only: `xincept-client join --tls-dir`)",
                           err=True)
        else:
            typer.echo(f"no CA key at {out / CA_KEY}: node keys only. For a site's XGBoost client certificate, run this "
                       "command against the folder that holds ca/ca.key (kept offline)", err=True)
        typer.echo(f"start the server with --auth-keys {out / 'nodes'}: only these nodes may join", err=True)
