"""Opening a login page in the Browser VM's Chromium through its DevTools HTTP endpoint."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from urllib.parse import quote

from hearth_agent.log import JsonLogger

# Chromium in the Browser VM is started with --remote-debugging-port=9222; it binds loopback only.
DEFAULT_DEVTOOLS_HOST = "127.0.0.1"
DEFAULT_DEVTOOLS_PORT = 9222
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DevToolsBrowser:
    """A Chromium DevTools endpoint that new tabs are opened through.

    Opening never raises: a CLI VM has no browser at all, and a Browser VM's Chromium may still be
    starting; either way the login goes on and the controller shows the URL to the user instead.
    """

    host: str = DEFAULT_DEVTOOLS_HOST
    port: int = DEFAULT_DEVTOOLS_PORT
    timeout_s: float = DEFAULT_TIMEOUT_S

    def open_url(self, url: str, *, logger: JsonLogger | None = None) -> bool:
        """Open ``url`` in a new tab (``PUT /json/new?<url>``); whether the browser took it.

        Chromium un-escapes the query before parsing it as a URL, so the URL is escaped whole:
        sent raw, the escapes inside its own query (``redirect_uri=http%3A...``) would be lost.
        """
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            connection.request("PUT", "/json/new?" + quote(url, safe=""))
            response = connection.getresponse()
            body = response.read(64 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            if logger is not None:
                logger.info("browser_unavailable", port=self.port, reason=_reason(exc))
            return False
        finally:
            connection.close()
        opened = response.status == 200 and _is_target(body)
        if logger is not None:
            if opened:
                logger.info("browser_opened_url", port=self.port)
            else:
                logger.warning("browser_refused_url", port=self.port, status=response.status)
        return opened


def _is_target(body: bytes) -> bool:
    """Whether a /json/new answer describes the new tab (an object with an ``id``)."""
    try:
        target = json.loads(body)
    except ValueError:
        return False
    return isinstance(target, dict) and isinstance(target.get("id"), str)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def open_url(url: str, *, logger: JsonLogger | None = None) -> bool:
    """Open ``url`` in the VM's Chromium on 127.0.0.1:9222 if it answers; never raises."""
    return DevToolsBrowser().open_url(url, logger=logger)
