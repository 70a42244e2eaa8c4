"""httpx clients for Hearth's own calls to agents, VMMs and the controller.

httpx builds a new TLS context for every client it makes, loading the CA bundle each time: 30 to
100 ms of CPU on this machine, paid even by a client that only ever speaks plain HTTP to a VM's
agent on loopback. Every per-call client shares one context instead (about 2 ms a client).
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one verifying TLS context (httpx's default: certifi's CA bundle) all clients share."""
    return httpx.create_ssl_context()


def async_client(**options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with ``options``, verifying TLS with the shared context.

    Proxy settings from the environment are not used: these calls go to addresses Hearth itself
    chose (loopback forwards, its own namespaces), never through an operator's HTTP proxy.
    """
    options.setdefault("verify", tls_context())
    options.setdefault("trust_env", False)
    return httpx.AsyncClient(**options)
