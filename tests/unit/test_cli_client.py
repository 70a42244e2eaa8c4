"""The command line's own API client: where it sends, as the SDK does."""

from __future__ import annotations

import pytest

from hearth.cli.client import ApiClient


@pytest.mark.parametrize("url", ["http://hearth.test:4000", "http://hearth.test:4000/"])
def test_a_url_with_or_without_a_trailing_slash_gives_the_same_paths(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "//api/vms" is another path to the server: every command but the SDK's answered 404.
    monkeypatch.setenv("HEARTH_URL", url)
    assert ApiClient(key="k").url == "http://hearth.test:4000"
