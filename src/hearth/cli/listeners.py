"""The controller's listening sockets, bound before it starts: an address that cannot be had
(in use by another program, not of this host) is refused before the controller opens its vault,
reconciles or boots a VM; uvicorn would bind only after the whole start. Every address the host
name resolves to is bound, as asyncio's server binds them."""

from __future__ import annotations

import errno
import socket
from typing import Any

from hearth.errors import ConfigError


def listening_sockets(host: str, port: int, *, setting: dict[str, str]) -> list[socket.socket]:
    """Sockets bound to every address ``host`` resolves to, at ``port``, as asyncio's server
    binds them (an IPv6 one for IPv6 only; they listen once the app has started); ConfigError
    naming the address, the setting (``setting``: by ``host``/``port``, the option or variable
    given) and the cause when one cannot be had (none is kept then)."""
    try:
        found = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        reason = f"names no address here: {exc.strerror or exc}; nothing was started"
        raise ConfigError(f"{setting['host']}={host} {reason}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            try:
                _bind(sock, address)
            except OSError as exc:
                raise _unbindable(exc, host, port, address, setting) from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind(sock: socket.socket, address: Any) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.set_inheritable(True)


def _unbindable(
    exc: OSError, host: str, port: int, address: Any, setting: dict[str, str]
) -> ConfigError:
    where = f"[{address[0]}]:{port}" if ":" in address[0] else f"{address[0]}:{port}"
    if exc.errno == errno.EADDRINUSE:
        hint = f"another program listens there: stop it, or set {setting['port']} to another port"
    else:
        hint = f"{setting['host']}={host}"
    return ConfigError(
        f"cannot listen on {where}: {exc.strerror or exc} ({hint}); nothing was started"
    )


__all__ = ["listening_sockets"]
