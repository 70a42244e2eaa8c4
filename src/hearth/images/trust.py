"""``hearth image trust-ca``: make an image trust one more certificate authority.

For sites whose traffic to the model providers passes a TLS-inspecting proxy (and for the test
image, whose provider stand-ins hold certificates of a test CA): the CA goes where Debian keeps
local CAs (``/usr/local/share/ca-certificates/``) and into the system bundle
(``/etc/ssl/certs/ca-certificates.crt``, what ``update-ca-certificates`` would write), which
every program in the VM reads — OpenSSL and rustls through it, the Node-based CLIs through
``NODE_EXTRA_CA_CERTS`` pointed at it (``GUEST_TLS_ENV``). The edit is made like
``install-agent``'s: on a copy, checked, swapped in with a backup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from hearth.errors import ImageVerifyFailed, InvalidInput
from hearth.images.agent_install import edit_image
from hearth.images.ext4 import Edit, Ext4Image, WriteFile, check_ext4

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOCAL_CA_DIR = "/usr/local/share/ca-certificates"
# What every command the agent runs in a CLI VM gets, so that each vendor CLI trusts the system
# bundle, and with it any CA added here: claude (Bun) and gemini (Node) have their roots compiled
# in and add NODE_EXTRA_CA_CERTS to them; codex (rustls) takes CODEX_CA_CERTIFICATE as its roots.
GUEST_TLS_ENV = {"NODE_EXTRA_CA_CERTS": SYSTEM_BUNDLE, "CODEX_CA_CERTIFICATE": SYSTEM_BUNDLE}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class TrustResult:
    """The outcome of ``trust_ca``."""

    image: Path
    fingerprint: str  # sha256 of the CA certificate, hex
    changed: bool
    backup: Path | None


def load_ca(pem: bytes) -> x509.Certificate:
    """The one CA certificate in ``pem``; InvalidInput for anything else."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidInput(f"not a PEM certificate: {exc}") from None
    if len(certificates) != 1:
        raise InvalidInput(f"expected one certificate, found {len(certificates)}")
    [certificate] = certificates
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise InvalidInput("the certificate is not a CA (no basicConstraints)") from None
    if not constraints.value.ca:
        raise InvalidInput("the certificate is not a CA (basicConstraints CA:FALSE)")
    return certificate


def trust_ca(image: Path, pem: bytes, *, name: str) -> TrustResult:
    """Add the CA in ``pem`` to ``image``'s trust store as ``name``; a no-op if it is there."""
    if not _NAME.match(name):
        raise InvalidInput(f"name {name!r}: lowercase letters, digits and dashes, at most 63")
    certificate = load_ca(pem)
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    block = certificate.public_bytes(Encoding.PEM)
    check_ext4(image)
    bundle = Ext4Image(image).read(SYSTEM_BUNDLE)
    if bundle is None:
        raise ImageVerifyFailed(
            f"{image} has no {SYSTEM_BUNDLE} (is ca-certificates installed?)",
            missing=[SYSTEM_BUNDLE],
        )
    if block in bundle:
        return TrustResult(image=image, fingerprint=fingerprint, changed=False, backup=None)
    joined = bundle if bundle.endswith(b"\n") else bundle + b"\n"
    edits: list[Edit] = [
        WriteFile(f"{LOCAL_CA_DIR}/hearth-{name}.crt", block),
        WriteFile(SYSTEM_BUNDLE, joined + block),
    ]

    def trusted(candidate: Path) -> None:
        if block not in (Ext4Image(candidate).read(SYSTEM_BUNDLE) or b""):
            raise ImageVerifyFailed(
                f"the CA is not in {SYSTEM_BUNDLE} after the edit", missing=[SYSTEM_BUNDLE]
            )

    backup = edit_image(image, edits, check=trusted)
    return TrustResult(image=image, fingerprint=fingerprint, changed=True, backup=backup)
