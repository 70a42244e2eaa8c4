"""``AgentBundle``: the controller's own agent build, as the bundle a live update pushes.

A gzip-compressed tar of ``hearth_agent/<name>.py`` (the files images carry, from
``hearth.images.layout.agent_sources``), built deterministically (sorted, no timestamps, owner
root), so one build always has one sha256, which the agent checks before it stages anything.
``stamped`` rewrites the version line, for a build that must report another version (tests, and
an operator's hotfix build).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import hearth_agent
from hearth.images.layout import agent_sources

_VERSION_LINE = re.compile(r'^__version__ = "[^"]*"$', re.MULTILINE)
PACKAGE = "hearth_agent"


@dataclass(frozen=True)
class AgentBundle:
    """One agent build: its version, the bundle's bytes and their sha256."""

    version: str
    data: bytes
    sha256: str
    # The files the bundle holds, by name in the package (what an image install writes too).
    sources: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls, *, version: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> AgentBundle:
        """The bundle of ``files`` (default: this controller's agent sources), stamped with
        ``version`` when given (default: the version the sources declare)."""
        sources = dict(files if files is not None else agent_sources())
        if version is not None:
            sources["__init__.py"] = stamped(sources["__init__.py"], version)
        return cls(
            version=version or hearth_agent.__version__,
            data=(data := _tar_gz(sources)),
            sha256=hashlib.sha256(data).hexdigest(),
            sources=sources,
        )


@functools.cache
def this_controllers_bundle() -> AgentBundle:
    """This controller's agent build (its own sources, their version), built once per process:
    a process serves one controller, but a test session starts hundreds."""
    return AgentBundle.build()


def stamped(init_py: bytes, version: str) -> bytes:
    """``__init__.py`` with its ``__version__`` line set to ``version``."""
    text, count = _VERSION_LINE.subn(f'__version__ = "{version}"', init_py.decode())
    if count != 1:
        raise ValueError("the agent's __init__.py has no single __version__ line")
    return text.encode()


def _tar_gz(sources: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(sources.items()):
            info = tarfile.TarInfo(f"{PACKAGE}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)
