"""A small client of the controller's API for the CLI: base URL and key from env or config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from hearth.errors import HearthError, Unauthorized
from hearth.sdk._config import api_key
from hearth.sdk._errors import HearthConfigError, shown_url, transport_text

CONFIG_FILE = Path.home() / ".config" / "hearth" / "cli.json"
DEFAULT_URL = "http://127.0.0.1:4000"


class ApiError(HearthError):
    """An error the controller answered with; carries its code and HTTP status."""

    # Class defaults only: every instance carries the controller's own code and status.
    code = "api_error"
    http_status = 502

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = status


def _config() -> dict[str, str]:
    try:
        data = json.loads(CONFIG_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _key(given: str | None, config: dict[str, str]) -> str:
    """The key given, else ``HEARTH_API_KEY``, else the config file's, as the SDK takes one:
    without the whitespace around it; Unauthorized, never quoting it, for one no header can
    carry."""
    for source, raw in (
        ("the key given", given),
        ("HEARTH_API_KEY", os.environ.get("HEARTH_API_KEY")),
        (f'"key" in {CONFIG_FILE}', config.get("key")),
    ):
        if raw:
            try:
                return api_key(raw, source=source)
            except HearthConfigError as exc:
                raise Unauthorized(str(exc)) from None
    return ""


class ApiClient:
    """Calls the controller; key and URL from the environment or ``~/.config/hearth/cli.json``."""

    def __init__(self, *, url: str | None = None, key: str | None = None) -> None:
        config = _config()
        chosen = url or os.environ.get("HEARTH_URL") or config.get("url") or DEFAULT_URL
        self.url = chosen.rstrip("/")
        self.key = _key(key, config)
        if not self.key:
            raise Unauthorized(
                f'no API key: set HEARTH_API_KEY or put {{"key": ...}} in {CONFIG_FILE}'
            )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; a JSON error body becomes ApiError."""
        try:
            response = httpx.request(
                method,
                f"{self.url}{path}",
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=kwargs.pop("timeout", 300),
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                0, "unreachable", f"cannot reach {shown_url(self.url)}: {transport_text(exc)}"
            ) from exc
        _raise_for(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text


def _raise_for(response: httpx.Response) -> None:
    """ApiError for any answer but a success (an error's JSON code and message, else its text:
    a redirect's page is not the API's answer)."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "error", response.text[:300]) from None
