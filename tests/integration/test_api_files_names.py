"""A workspace may hold names that are not UTF-8 (a repository from another system, a tool's
byte-named files): listing their directory answers 200, each such name shown with U+FFFD for
every byte that is no UTF-8 (a JSON answer holds text only), never a 500. A real agent in
process over the fake backend's VMs."""

from __future__ import annotations

import os

from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api
from tests.integration.test_api_files import files_api, new_vm, workspace

__all__ = ["files_api"]


async def test_names_that_are_not_utf8_are_listed_with_replacement_characters(
    files_api: Api,
) -> None:
    api = files_api
    vm_id, headers = await new_vm(api, "ann")
    folder = workspace(api, vm_id) / "odd"
    folder.mkdir(parents=True)
    # Bytes that are not UTF-8 travel in a str as the file system's escapes (os.fsdecode).
    (folder / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1")
    (folder / "link").symlink_to(os.fsdecode(b"tar\xffget"))
    (folder / "plain.txt").write_text("utf-8")

    listed = await api.client.get(
        f"/api/vms/{vm_id}/files/list", params={"path": "odd"}, headers=headers
    )

    assert listed.status_code == 200, listed.text
    entries = {entry["name"]: entry for entry in listed.json()["entries"]}
    assert set(entries) == {"caf\ufffd.txt", "link", "plain.txt"}
    assert entries["caf\ufffd.txt"]["size"] == len(b"latin-1")
    assert entries["link"]["target"] == "tar\ufffdget"
