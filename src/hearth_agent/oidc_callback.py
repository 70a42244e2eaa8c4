"""The loopback server the issuer redirects the browser to: ``127.0.0.1:<port>/callback``."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hearth_agent.errors import AgentError
from hearth_agent.httpserver import LocalHTTPServer

CALLBACK_HOST = "127.0.0.1"
CALLBACK_PATH = "/callback"
CALLBACK_SOCKET_TIMEOUT_S = 30.0


class CallbackPortUnavailable(AgentError, code="callback_port_unavailable", http_status=409):
    """The requested loopback callback port cannot be bound, usually because it is in use (409)."""


@dataclass(frozen=True)
class CallbackPage:
    """The page the browser shows after a redirect to the callback."""

    status: int
    title: str
    message: str


def single_param(query: Mapping[str, list[str]], name: str) -> str | None:
    """A query parameter that must appear once; None if absent or repeated."""
    values = query.get(name)
    return values[0] if values is not None and len(values) == 1 else None


class _CallbackHandler(BaseHTTPRequestHandler):
    """Answers the browser's redirect to ``/callback``; every other path is 404."""

    protocol_version = "HTTP/1.1"
    server_version = "hearth-agent-login"
    timeout = CALLBACK_SOCKET_TIMEOUT_S
    server: CallbackServer

    def do_GET(self) -> None:
        """Handle the redirect."""
        split = urlsplit(self.path)
        if split.path != CALLBACK_PATH:
            page = CallbackPage(404, "Not found", "This is the sign-in callback of a login.")
        else:
            page = self.server.on_callback(parse_qs(split.query, keep_blank_values=True))
        body = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(page.title)}</title></head>\n"
            f"<body><h1>{html.escape(page.title)}</h1>\n<p>{html.escape(page.message)}</p>"
            "</body></html>\n"
        ).encode()
        self.send_response(page.status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def version_string(self) -> str:
        """The Server header: no Python version."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the request line carries the authorization code and state."""


class CallbackServer(LocalHTTPServer):
    """The loopback server the provider redirects the browser to."""

    daemon_threads = True

    def __init__(
        self, port: int, *, on_callback: Callable[[Mapping[str, list[str]]], CallbackPage]
    ) -> None:
        self.on_callback = on_callback
        super().__init__((CALLBACK_HOST, port), _CallbackHandler)
