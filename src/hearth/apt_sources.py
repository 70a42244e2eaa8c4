"""The Debian mirror the host's apt uses, for debootstrap (``HEARTH_DEBIAN_MIRROR`` unset)."""

from __future__ import annotations

import re
from pathlib import Path

_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# What debootstrap can fetch from; apt's ``mirror+file:`` lists are read for their first one.
_FETCHABLE = ("http://", "https://", "file:/")
_MIRROR_LIST = "mirror+file:"


def mirror_from_apt_sources(suite: str, roots: tuple[Path, ...] = _APT_SOURCES) -> str | None:
    """Find the URI that the host's apt uses for ``suite`` main (one-line and deb822 formats)."""
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            files.extend(sorted(p for p in root.iterdir() if p.suffix in {".list", ".sources"}))
        elif root.is_file():
            files.append(root)
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                if (
                    "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                ):
                    for uri in fields.get("uris", "").split():
                        usable = _usable(uri)
                        if usable:
                            return usable
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    usable = _usable(rest[0]) if len(rest) >= 2 and rest[1] == suite else None
                    if usable:
                        return usable
    return None


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields


def _usable(uri: str) -> str | None:
    """``uri`` as debootstrap can use it: itself when it can fetch from it, the first mirror of an
    apt ``mirror+file:`` list (Debian's cloud images use one), else None (passed over)."""
    if uri.startswith(_FETCHABLE):
        return uri
    if uri.startswith(_MIRROR_LIST):
        path = Path(uri.removeprefix(_MIRROR_LIST).removeprefix("//"))
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in lines:
            first = line.split("#", 1)[0].split()
            if first and first[0].startswith(("http://", "https://")):
                return first[0]
    return None
