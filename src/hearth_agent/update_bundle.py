"""The update bundle: a gzip'd tar of ``hearth_agent/<name>.py`` files, checked whole in memory.

Nothing is written until every check has passed: the gzip stream is inflated with a hard cap
(``MAX_UNCOMPRESSED_BYTES``, so a small bomb cannot fill memory), then every member must be a
regular file named ``hearth_agent/<identifier>.py`` (no directories, links, devices, ``..`` or
other paths), at most ``MAX_MEMBERS`` of them, each parsing as Python, ``__init__.py`` and
``__main__.py`` among them, and ``__init__.py`` must declare the ``__version__`` the request's
header states: the guard waits for exactly that version, so a bundle that would never report it
is refused now rather than rolled back a deadline later.
"""

from __future__ import annotations

import ast
import io
import re
import tarfile
import zlib

from hearth_agent.errors import InvalidBundle
from hearth_agent.update import BUNDLE_PREFIX, MAX_MEMBERS, MAX_UNCOMPRESSED_BYTES

REQUIRED_FILES = ("__init__.py", "__main__.py")
_FILE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.py")
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


def read_bundle(body: bytes, *, version: str) -> dict[str, bytes]:
    """The bundle's files by name (``"app.py"`` for ``hearth_agent/app.py``), once every check
    has passed; InvalidBundle says what is wrong otherwise."""
    files = _members(_gunzip(body))
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise InvalidBundle(f"the bundle has no {', '.join(BUNDLE_PREFIX + m for m in missing)}")
    for name, data in sorted(files.items()):
        _parse(name, data)
    declared = declared_version(files["__init__.py"])
    if declared != version:
        raise InvalidBundle(
            f"{BUNDLE_PREFIX}__init__.py declares __version__ {declared!r}, "
            f"the request states {version!r}"
        )
    return files


def declared_version(init_source: bytes) -> str | None:
    """The string a module assigns to ``__version__`` at its top level, if any."""
    for node in ast.parse(init_source).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return None


def _gunzip(body: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing, CRC checked
    try:
        data = inflater.decompress(body, MAX_UNCOMPRESSED_BYTES + 1)
    except zlib.error as exc:
        raise InvalidBundle(f"the body is not a gzip stream: {exc}") from exc
    if len(data) > MAX_UNCOMPRESSED_BYTES:
        raise InvalidBundle(f"the bundle inflates to more than {MAX_UNCOMPRESSED_BYTES} bytes")
    if not inflater.eof:
        raise InvalidBundle("the gzip stream is truncated")
    if inflater.unused_data:
        raise InvalidBundle("the body has data after the end of its gzip stream")
    return data


def _members(tar_bytes: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise InvalidBundle(f"the bundle has more than {MAX_MEMBERS} members")
                name = member_file_name(member)
                if name in files:
                    raise InvalidBundle(f"member {member.name!r} appears twice")
                source = tar.extractfile(member)
                data = source.read() if source is not None else b""
                if len(data) != member.size:
                    raise InvalidBundle(f"member {member.name!r} is truncated")
                files[name] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidBundle(f"the bundle is not a readable tar: {exc}") from exc
    return files


def member_file_name(member: tarfile.TarInfo) -> str:
    """The file name a tar member installs as, or InvalidBundle if the member is refused."""
    if member.type not in _REGULAR_TYPES:
        raise InvalidBundle(f"member {member.name!r} is not a regular file")
    name = member.name.removeprefix(BUNDLE_PREFIX)
    if name == member.name or not _FILE_NAME.fullmatch(name):
        raise InvalidBundle(f"member {member.name!r} is not named {BUNDLE_PREFIX}<identifier>.py")
    return name


def _parse(name: str, data: bytes) -> None:
    try:
        ast.parse(data, filename=BUNDLE_PREFIX + name)
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise InvalidBundle(f"{BUNDLE_PREFIX}{name} is not valid Python: {exc}") from exc
