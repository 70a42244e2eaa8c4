"""Frozen, typed settings: the only place Hearth reads its environment."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hearth.errors import ConfigError

_DEFAULT_STATE_DIR = Path("/var/lib/hearth")
_DEFAULT_CACHE_DIR = Path("/var/cache/hearth")
_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything Hearth is configured with, validated once at start."""

    state_dir: Path = _DEFAULT_STATE_DIR
    cache_dir: Path = _DEFAULT_CACHE_DIR
    debian_mirror: str | None = None
    debian_suite: str = "bookworm"
    log_json: bool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``HEARTH_*`` variables (or the given mapping) into validated settings."""
        env = os.environ if env is None else env
        state_dir = Path(env.get("HEARTH_STATE_DIR", str(_DEFAULT_STATE_DIR)))
        cache_dir = Path(env.get("HEARTH_CACHE_DIR", str(_DEFAULT_CACHE_DIR)))
        for name, value in (("HEARTH_STATE_DIR", state_dir), ("HEARTH_CACHE_DIR", cache_dir)):
            if not value.is_absolute():
                raise ConfigError(f"{name} must be an absolute path, got {str(value)!r}")
        mirror = env.get("HEARTH_DEBIAN_MIRROR") or None
        if mirror is not None and not re.match(r"^(https?|file)://", mirror):
            raise ConfigError("HEARTH_DEBIAN_MIRROR must be an http(s):// or file:// URL")
        log_format = env.get("HEARTH_LOG_FORMAT", "auto")
        if log_format not in {"auto", "json", "console"}:
            raise ConfigError("HEARTH_LOG_FORMAT must be one of auto, json, console")
        return cls(
            state_dir=state_dir,
            cache_dir=cache_dir,
            debian_mirror=mirror,
            debian_suite=env.get("HEARTH_DEBIAN_SUITE", "bookworm"),
            log_json=None if log_format == "auto" else log_format == "json",
        )

    def resolve_debian_mirror(self) -> str:
        """The Debian mirror for debootstrap: the configured one, else the host's apt source."""
        if self.debian_mirror:
            return self.debian_mirror
        found = mirror_from_apt_sources(self.debian_suite)
        if found is None:
            raise ConfigError(
                "no Debian mirror found in the host's apt sources; set HEARTH_DEBIAN_MIRROR"
            )
        return found


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
                    uris = fields.get("uris", "").split()
                    if uris:
                        return uris[0]
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2 and rest[1] == suite:
                        return rest[0]
    return None


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields
