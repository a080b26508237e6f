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
) -> None:
    """Create TLS certificates for a pilot federation (use your organisation's PKI in production)."""
    setup_logging()
    from xincept.common.tls import make_certificates

    files = make_certificates(out, list(host))
    for name, path in files.items():
        typer.echo(f"{name}: {path}")
    typer.echo(f"give each site {files['ca']} (--root-cert); keep {files['ca_key']} and {files['key']} private")
