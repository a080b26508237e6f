"""Certificates for the federation: a private CA, a server certificate, and SuperNode key pairs.

For production, use your organisation's PKI; these are for pilots and tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from xincept.common.atomic import write_bytes_atomic

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "XIncept-ALL federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(out: Path, hosts: list[str], days: int = 365) -> dict[str, Path]:
    """Write ca.crt, ca.key, server.pem, server.key, client.pem and client.key into ``out`` (server valid for ``hosts``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("XIncept-ALL CA")).issuer_name(_name("XIncept-ALL CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca": out / CA_CERT, "ca_key": out / "ca.key", "cert": out / SERVER_CERT, "key": out / SERVER_KEY,
             "client_cert": out / "client.pem", "client_key": out / "client.key"}
    pem = serialization.Encoding.PEM
    nokey = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    # a client certificate for XGBoost's mutual-TLS federated communicator
    ckey = ec.generate_private_key(ec.SECP384R1())
    ccert = (x509.CertificateBuilder().subject_name(_name("xincept-site")).issuer_name(ca.subject)
             .public_key(ckey.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .sign(ca_key, hashes.SHA256()))
    write_bytes_atomic(files["client_cert"], ccert.public_bytes(pem))
    write_bytes_atomic(files["client_key"], ckey.private_bytes(pem, pkcs8, nokey))
    files["client_key"].chmod(0o600)
    key = ec.generate_private_key(ec.SECP384R1())
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    write_bytes_atomic(files["ca"], ca.public_bytes(pem))
    write_bytes_atomic(files["ca_key"], ca_key.private_bytes(pem, pkcs8, nokey))
    write_bytes_atomic(files["cert"], cert.public_bytes(pem))
    write_bytes_atomic(files["key"], key.private_bytes(pem, pkcs8, nokey))
    files["ca_key"].chmod(0o600)
    files["key"].chmod(0o600)
    return files


def tls_files(tls_dir: Path) -> dict[str, Path]:
    """The CA, certificate and key a SuperLink needs, checked to exist."""
    from xincept.common.errors import SettingError

    files = {"ca": tls_dir / CA_CERT, "cert": tls_dir / SERVER_CERT, "key": tls_dir / SERVER_KEY}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SettingError(f"--tls-dir {tls_dir} lacks {missing}: create them with `xincept-server keys --out {tls_dir}` "
                           "or pass your organisation's certificates with these names")
    return files


def make_node_keys(folder: Path, names: list[str]) -> dict[str, Path]:
    """One ECDSA (P-384) key pair per SuperNode in OpenSSH format: NAME.key (private) and NAME.key.pub.

    The server registers the public keys (``xincept-server start --auth-keys FOLDER``); only those nodes
    may connect. Each private key stays at its site.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        path = folder / f"{name}.key"
        path.write_bytes(private)
        path.chmod(0o600)
        Path(f"{path}.pub").write_bytes(public + f" {name}\n".encode())
        out[name] = path
    return out
