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


CA_KEY = Path("ca") / "ca.key"  # under OUT: kept by the coordinating team, never mounted into the server


def _cert(subject: str, issuer, issuer_key, public_key, days: int, sans: list | None = None, ca: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _private_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certificates(out: Path, hosts: list[str], days: int = 365) -> dict[str, Path]:
    """Write ca.crt, server.pem and server.key into ``out`` (server valid for ``hosts``) and the CA's key into
    ``out/ca/ca.key``. Private keys are created with mode 0600 (never readable by others, at no moment)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _cert("XIncept-ALL CA", _name("XIncept-ALL CA"), ca_key, ca_key.public_key(), days, ca=True)
    files = {"ca": out / CA_CERT, "ca_key": out / CA_KEY, "cert": out / SERVER_CERT, "key": out / SERVER_KEY}
    key = ec.generate_private_key(ec.SECP384R1())
    sans = []
    # the SuperLink itself listens on 127.0.0.1 with this certificate (xincept.server.superlink): always valid there
    hosts = list(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = _cert(hosts[0], ca.subject, ca_key, key.public_key(), days, sans)
    pem = serialization.Encoding.PEM
    files["ca_key"].parent.mkdir(mode=0o700, exist_ok=True)
    write_bytes_atomic(files["ca_key"], _private_pem(ca_key), mode=0o600)
    write_bytes_atomic(files["key"], _private_pem(key), mode=0o600)
    write_bytes_atomic(files["ca"], ca.public_bytes(pem))
    write_bytes_atomic(files["cert"], cert.public_bytes(pem))
    return files


def make_site_certificates(out: Path, names: list[str], days: int = 365) -> dict[str, Path]:
    """One client certificate per site for XGBoost's mutual TLS, signed by ``out``'s CA:
    ``out/sites/NAME/{ca.crt, client.pem, client.key}`` (the folder a site passes as ``--tls-dir``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from xincept.common.errors import SettingError

    key_path = out / CA_KEY
    if not key_path.is_file():
        raise SettingError(f"{key_path} is missing: site certificates are signed by the CA made with `xincept-server keys "
                           f"--out {out}` (without --nodes-only)")
    ca_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
    folders = {}
    for name in names:
        folder = out / "sites" / name
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        cert = _cert(f"site {name}", ca.subject, ca_key, key.public_key(), days)
        write_bytes_atomic(folder / "client.key", _private_pem(key), mode=0o600)
        write_bytes_atomic(folder / "client.pem", cert.public_bytes(serialization.Encoding.PEM))
        write_bytes_atomic(folder / CA_CERT, (out / CA_CERT).read_bytes())
        # recorded under the site's name beside its node key: the server checks at join that the site presents this one
        (out / "nodes").mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / "nodes" / XGB_CERT_RECORD.format(name), (cert_fingerprint(folder / "client.pem") + "\n").encode())
        folders[name] = folder
    return folders


def cert_fingerprint(path: Path) -> str:
    """SHA-256 of a PEM certificate's DER bytes (public: it names the certificate, not its key)."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


XGB_CERT_RECORD = "{}.client.sha256"  # OUT/nodes/<site>.client.sha256: the fingerprint of the site's XGBoost certificate


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
        write_bytes_atomic(path, private, mode=0o600)  # private from its first byte
        write_bytes_atomic(Path(f"{path}.pub"), public + f" {name}\n".encode())
        out[name] = path
    return out
