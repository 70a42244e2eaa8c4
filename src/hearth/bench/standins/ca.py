"""A certificate authority for tests and benchmarks: one self-signed root and the leaves it issues.

The stand-ins serve TLS for the providers' real host names (``api.anthropic.com``, ...), so a
vendor CLI that trusts this root (and only a process told to trust it does) connects to them as
if they were the providers. Keys are ECDSA P-256: quick to make, and accepted by every TLS stack
the CLIs use (BoringSSL in Bun, rustls/webpki in codex, OpenSSL in Node). The extensions are the
ones strict verifiers insist on: a CA with ``basicConstraints`` and ``keyCertSign``; a leaf that
is not a CA, names its hosts in ``subjectAltName``, is for ``serverAuth`` and carries the
authority key identifier that links it to the root.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(hours=1)  # a client whose clock lags a little still accepts it


@dataclass(frozen=True)
class LeafFiles:
    """A leaf certificate and its key on disk, PEM, as ``ssl.SSLContext.load_cert_chain`` wants."""

    cert: Path
    key: Path
    hosts: tuple[str, ...]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """A certificate of ``subject``, valid from a little before ``now``, with the constraints
    and key usage of a root CA (``ca``: it signs certificates) or of a server's leaf."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


class TestCA:
    """A root key and certificate kept in memory; :meth:`issue` writes leaves to disk."""

    __test__ = False  # a pytest collector must not take the "Test" prefix for a test class

    def __init__(self, *, name: str = "Hearth Test Root CA") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self.certificate = (
            _builder(subject, subject, public, now, ca=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        """The root certificate, PEM: the whole content of a CA bundle that trusts only it."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_bundle(self, path: Path) -> Path:
        """Write the root certificate to ``path`` (the file a CA env variable points at)."""
        path.write_bytes(self.pem)
        return path

    def issue(self, hosts: Sequence[str], directory: Path, *, stem: str = "leaf") -> LeafFiles:
        """A server certificate for ``hosts`` (DNS names or IP literals), written to
        ``directory/<stem>.pem`` and ``<stem>.key``."""
        if not hosts:
            raise ValueError("a leaf certificate needs at least one host")
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        ca_public = self._key.public_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        cert = (
            _builder(subject, self.certificate.subject, key.public_key(), now, ca=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{stem}.pem"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return LeafFiles(cert=cert_path, key=key_path, hosts=tuple(hosts))
