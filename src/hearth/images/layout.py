"""What Hearth puts into images (agent, unit, init, browser service), for install and verify."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import hearth_agent
from hearth.images.ext4 import Edit, MakeDir, Symlink, WriteFile

AGENT_ROOT = "/opt/hearth/agent"
AGENT_PACKAGE_DIR = f"{AGENT_ROOT}/hearth_agent"
AGENT_MANIFEST = f"{AGENT_ROOT}/MANIFEST.json"
UNIT_PATH = "/etc/systemd/system/hearth-agent.service"
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/hearth-agent.service"
# /sbin is a symlink to usr/sbin in Debian 12; debugfs writes to the real directory.
INIT_PATH = "/usr/sbin/hearth-init"
# Shipped in every image (one payload, one verify); hearth-init starts it only where Chromium is.
BROWSER_SERVICE_PATH = "/usr/sbin/hearth-browser"
EXECUTABLES = frozenset({INIT_PATH, BROWSER_SERVICE_PATH})
# The agent keeps its token on the guest's /run (tmpfs): it lives exactly as long as the VM's
# memory (guests never reboot: QEMU runs with -no-reboot), survives agent restarts, never reaches
# the VM's disk overlay, and a claim costs no disk flush (≈ 65 ms of an emulated guest here).
TOKEN_FILE = "/run/hearth-agent/token"  # noqa: S105 - a path, not a secret
GUEST_PYTHON = "/usr/bin/python3"


def guest_asset(name: str) -> bytes:
    """A file shipped with Hearth for the guest (unit, init scripts)."""
    return importlib.resources.files("hearth.images").joinpath("guest").joinpath(name).read_bytes()


def agent_sources() -> dict[str, bytes]:
    """The agent package's Python files by name, as they will be copied into images."""
    package_dir = Path(hearth_agent.__file__).parent
    return {p.name: p.read_bytes() for p in sorted(package_dir.glob("*.py"))}


@dataclass(frozen=True)
class AgentPayload:
    """Everything install-agent writes, plus the manifest that verify checks against."""

    version: str
    files: dict[str, bytes]
    manifest: bytes

    @property
    def digest(self) -> str:
        """A hash of every file the payload writes; equal digests mean identical installs."""
        return hashlib.sha256(self.manifest).hexdigest()


def build_payload(
    sources: Mapping[str, bytes] | None = None, version: str | None = None
) -> AgentPayload:
    """Assemble the files for the agent ``sources`` of ``version`` (default: this controller's
    agent; a live rollout passes its bundle's, so that images carry what the VMs run)."""
    version = version or hearth_agent.__version__
    files: dict[str, bytes] = {
        f"{AGENT_PACKAGE_DIR}/{name}": data
        for name, data in (sources if sources is not None else agent_sources()).items()
    }
    files[UNIT_PATH] = guest_asset("hearth-agent.service")
    files[INIT_PATH] = guest_asset("hearth-init")
    files[BROWSER_SERVICE_PATH] = guest_asset("hearth-browser")
    manifest = json.dumps(
        {
            "agent_version": version,
            "files": {
                path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())
            },
            "unit_link": {UNIT_LINK: UNIT_PATH},
        },
        indent=2,
        sort_keys=True,
    ).encode()
    return AgentPayload(version=version, files=files, manifest=manifest + b"\n")


def payload_edits(payload: AgentPayload) -> list[Edit]:
    """The ordered edits that install the payload into an image."""
    edits: list[Edit] = [
        MakeDir("/opt"),
        MakeDir("/etc"),
        MakeDir("/usr"),
        MakeDir("/usr/sbin"),
        MakeDir("/opt/hearth"),
        MakeDir(AGENT_ROOT),
        MakeDir(AGENT_PACKAGE_DIR),
        MakeDir("/etc/systemd"),
        MakeDir("/etc/systemd/system"),
        MakeDir("/etc/systemd/system/multi-user.target.wants"),
    ]
    for path, data in sorted(payload.files.items()):
        edits.append(WriteFile(path, data, mode=0o755 if path in EXECUTABLES else 0o644))
    edits.append(Symlink(UNIT_LINK, UNIT_PATH))
    edits.append(WriteFile(AGENT_MANIFEST, payload.manifest, mode=0o644))
    return edits
