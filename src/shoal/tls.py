"""TLS: a self-signed CA made at first start, a server certificate it signs, and pinning.

Clients learn the CA by fetching /ca.crt over an unverified connection and keeping it only when
its SHA-256 fingerprint matches the one they were given (in a join token or `context add`); after
that every connection verifies the server against that CA.
"""

import datetime
import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.files import write_private


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    ca_pem: bytes
    fingerprint: str


def fingerprint_of(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sans(extra: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for entry in ["localhost", socket.gethostname(), "127.0.0.1", "::1", *extra]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    unique: dict[str, x509.GeneralName] = {str(n.value): n for n in names}
    return list(unique.values())


def ensure_server_tls(directory: Path, extra_sans: list[str] | None = None) -> ServerTls:
    """The CA and server certificate in directory, made on first call and kept after."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_file, ca_key_file = directory / "ca.crt", directory / "ca.key"
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    now = datetime.datetime.now(datetime.UTC)
    if not ca_cert_file.exists() or not ca_key_file.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        write_private(ca_key_file, _key_pem(ca_key))
        ca_cert_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        cert_file.unlink(missing_ok=True)
    ca_pem = ca_cert_file.read_bytes()
    if not cert_file.exists() or not key_file.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        loaded = serialization.load_pem_private_key(ca_key_file.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal controller")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(_sans(extra_sans or [])), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(loaded, hashes.SHA256())
        )
        write_private(key_file, _key_pem(key))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ServerTls(cert_file, key_file, ca_pem, fingerprint_of(ca_pem))


class FingerprintMismatch(Exception):
    pass


def fetch_pinned_ca(server: str, fingerprint: str) -> bytes:
    """The server's CA certificate, if its fingerprint is the one expected."""
    response = httpx.get(server.rstrip("/") + "/ca.crt", verify=False, timeout=15)
    response.raise_for_status()
    pem = response.content
    actual = fingerprint_of(pem)
    wanted = fingerprint.lower().removeprefix("sha256:")
    if actual != wanted:
        raise FingerprintMismatch(
            f"the server's CA has fingerprint {actual}, not {wanted}: refusing to trust it"
        )
    return pem
