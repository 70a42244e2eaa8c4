"""The live-update contract between the controller and the agent: headers, limits, release names.

    POST /agent/update     body: a gzip'd tar of hearth_agent/<name>.py files (application/gzip)
        X-Hearth-Agent-Version: 0.1.1          the bundle's version (1 to 4 dotted numbers)
        X-Hearth-Agent-Sha256: <64 hex>        sha256 of the raw body
        X-Hearth-Update-Deadline-S: 60         optional, 5..600: how long the new build has to
                                               answer /health healthy before it is rolled back
    → 202 {"updating": true, "from", "to", "release"}, then the agent exits and init restarts it

The controller imports this module (it is stdlib only and does nothing on import); the agent's
side of the update is ``updater`` (stage, swap, hand over), ``update_guard`` (watch, roll back)
and ``install_root`` (the layout on disk).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hearth_agent.errors import InvalidBundle

VERSION_HEADER = "X-Hearth-Agent-Version"
SHA256_HEADER = "X-Hearth-Agent-Sha256"
DEADLINE_HEADER = "X-Hearth-Update-Deadline-S"
BUNDLE_CONTENT_TYPE = "application/gzip"
# Every member of a bundle is a regular file named BUNDLE_PREFIX + "<identifier>.py".
BUNDLE_PREFIX = "hearth_agent/"
MAX_BUNDLE_BYTES = 8 * 1024 * 1024  # the compressed body
MAX_UNCOMPRESSED_BYTES = 16 * 1024 * 1024  # the tar stream inside it
MAX_MEMBERS = 200
DEFAULT_DEADLINE_S = 60
MIN_DEADLINE_S = 5
MAX_DEADLINE_S = 600

_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SECONDS = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,3})?")


def release_name(version: str, sha256: str) -> str:
    """The directory name of a pushed release: ``<version>-<first 12 hex of its sha256>``."""
    return f"{version}-{sha256[:12].lower()}"


@dataclass(frozen=True)
class UpdateRequest:
    """What the headers of ``POST /agent/update`` ask for."""

    version: str
    sha256: str  # lower-case hex
    deadline_s: float = DEFAULT_DEADLINE_S

    @property
    def release(self) -> str:
        """The release directory this bundle is staged in."""
        return release_name(self.version, self.sha256)

    @classmethod
    def from_headers(cls, header: Callable[[str], str | None]) -> UpdateRequest:
        """Read and check the update headers (``header`` looks one up by name); InvalidBundle
        names the first header that is missing or malformed."""
        content_type = (header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in (BUNDLE_CONTENT_TYPE, "application/x-gzip"):
            raise InvalidBundle(f"Content-Type must be {BUNDLE_CONTENT_TYPE}")
        version = (header(VERSION_HEADER) or "").strip()
        if not _VERSION.fullmatch(version):
            raise InvalidBundle(
                f"header {VERSION_HEADER} must be 1 to 4 dotted numbers, e.g. 0.1.1"
            )
        sha256 = (header(SHA256_HEADER) or "").strip()
        if not _SHA256.fullmatch(sha256):
            raise InvalidBundle(
                f"header {SHA256_HEADER} must be the body's sha256 in 64 hex digits"
            )
        deadline_text = (header(DEADLINE_HEADER) or "").strip()
        deadline_s: float = DEFAULT_DEADLINE_S
        if deadline_text:
            if not _SECONDS.fullmatch(deadline_text) or not (
                MIN_DEADLINE_S <= float(deadline_text) <= MAX_DEADLINE_S
            ):
                raise InvalidBundle(
                    f"header {DEADLINE_HEADER} must be seconds from {MIN_DEADLINE_S} "
                    f"to {MAX_DEADLINE_S}"
                )
            deadline_s = float(deadline_text)
        return cls(version=version, sha256=sha256.lower(), deadline_s=deadline_s)
