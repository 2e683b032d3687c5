"""Certificates for the render server, their fingerprints, and the client's store of trusted servers.

The server makes a self-signed certificate on its first start (an EC P-256
key, valid ten years) and keeps it, so that its fingerprint stays the same
across restarts.  Clients do not check it against certificate authorities:
they pin its SHA-256 fingerprint, given on the command line or remembered
the first time they meet the server (trust on first use, as SSH does).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import logging
import ssl
from pathlib import Path

from engine.weights_cache import write_atomically

log = logging.getLogger(__name__)

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"


class CertificateError(RuntimeError):
    """A certificate or key that cannot be used, or a store of trusted servers that cannot be read."""


def ensure_certificate(directory: Path) -> tuple[Path, Path, bool]:
    """(cert path, key path, made now): the certificate kept in ``directory``, made there if it is not yet."""
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if cert.is_file() and key.is_file():
        return cert, key, False
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fomm-live render server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_bytes = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    write_atomically(key, key_bytes, mode=0o600)
    write_atomically(cert, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, key, True


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for this certificate and key; raises CertificateError saying what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as error:
        raise CertificateError(f"cannot use the certificate {cert} with the key {key}: {error}") from None
    return context


def certificate_fingerprint(cert: Path) -> str:
    """SHA-256 fingerprint (64 lowercase hex digits) of the first certificate in a PEM file."""
    try:
        pem = cert.read_text()
        der = ssl.PEM_cert_to_DER_cert(pem[pem.index("-----BEGIN CERTIFICATE-----"):])
    except (OSError, ValueError) as error:
        raise CertificateError(f"cannot read a PEM certificate from {cert}: {error}") from None
    return der_fingerprint(der)


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as users paste it (``SHA256:AB:CD:...``, any case, colons or not) -> 64 lowercase hex digits."""
    digits = text.strip().lower()
    digits = digits.removeprefix("sha256:").removeprefix("sha256=").replace(":", "")
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"expected a SHA-256 fingerprint (64 hex digits, colons allowed), got {text!r}")
    return digits


class KnownServers:
    """The fingerprints of servers trusted on first use, by ``host:port``, in a JSON file (``known_servers.json``)."""

    def __init__(self, path: Path):
        self.path = path

    def get(self, address: str) -> str | None:
        return self._read().get(address)

    def remember(self, address: str, fingerprint: str) -> None:
        entries = self._read()
        entries[address] = fingerprint
        write_atomically(self.path, (json.dumps(entries, indent=1, sort_keys=True) + "\n").encode(), mode=0o644)

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise CertificateError(f"cannot read the trusted servers in {self.path}: {error}") from None
        try:
            entries = json.loads(text)
        except ValueError:
            entries = None
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise CertificateError(f"{self.path} is not a JSON object of host:port -> fingerprint; fix it or "
                                   "remove it (every server is then trusted again on first use)")
        return entries
