"""``hearth vm …``: create, list, show and destroy VMs through the controller's API."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from hearth.cli.client import ApiClient
from hearth.cli.common import console, err_console, fail, plain
from hearth.cli.local import vm_run
from hearth.errors import HearthError

vm_app = typer.Typer(
    help="VMs: through the controller's API (run: directly).", no_args_is_help=True
)
vm_app.command("run")(vm_run)


def _call(method: str, path: str, **kwargs: Any) -> Any:
    """The controller's answer to ``method path``; an error ends the command with its message."""
    try:
        return ApiClient().request(method, path, **kwargs)
    except HearthError as exc:
        fail(exc)


def _table(vms: list[dict[str, Any]]) -> Table:
    table = Table()
    # Ids are copied into other commands: never shorten them, whatever the width.
    table.add_column("id", no_wrap=True, min_width=39)
    for column in ("user", "type", "status", "boot", "agent", "version", "created"):
        table.add_column(column)
    for vm in vms:
        row = (
            vm["id"],
            vm["userId"],
            vm["vmType"],
            vm["status"],
            vm.get("bootMode") or "-",
            vm.get("agentUrl") or "-",
            _version(vm),
            vm["createdAt"][:19],
        )
        table.add_row(*map(plain, row))
    return table


def _version(vm: dict[str, Any]) -> str:
    version = vm.get("agentVersion") or "-"
    return f"{version} (outdated)" if vm.get("agentOutdated") else version


@vm_app.command("create")
def vm_create(
    user: Annotated[str | None, typer.Option(help="Owner (required with an admin key).")] = None,
    vm_type: Annotated[str, typer.Option("--type", help="cli; browser: admin keys only")] = "cli",
    vcpus: Annotated[int | None, typer.Option()] = None,
    mem_mib: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Create a VM and wait until its agent is healthy."""
    body: dict[str, Any] = {"vmType": vm_type}
    if user:
        body["userId"] = user
    if vcpus:
        body["vcpus"] = vcpus
    if mem_mib:
        body["memMib"] = mem_mib
    with err_console.status("creating VM …"):
        vm = _call("POST", "/api/vms", json=body)
    console.print(_table([vm]))
    if vm.get("agentToken"):
        curl = f'curl -H "Authorization: Bearer {vm["agentToken"]}" {vm["agentUrl"]}/version'
        console.print(plain(f"agent: {curl}"), soft_wrap=True)


@vm_app.command("list")
def vm_list(
    status: Annotated[
        str | None,
        typer.Option(help="Only these statuses, comma-separated (default: all but destroyed)."),
    ] = None,
) -> None:
    """List VMs (yours, or everybody's with an admin key), oldest first: every page."""
    params = {"status": status} if status else {}
    page = _call("GET", "/api/vms", params=params)
    vms = page["vms"]
    while page.get("nextAfter"):
        page = _call("GET", "/api/vms", params={**params, "after": page["nextAfter"]})
        vms += page["vms"]
    console.print(_table(vms))


@vm_app.command("show")
def vm_show(vm_id: str) -> None:
    """Show one VM."""
    vm = _call("GET", f"/api/vms/{quote(vm_id, safe='')}")
    table = Table(show_header=False, title=plain(vm_id))
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in vm.items():
        table.add_row(plain(key), plain(value))
    console.print(table)


@vm_app.command("destroy")
def vm_destroy(vm_id: str) -> None:
    """Destroy a VM."""
    vm = _call("DELETE", f"/api/vms/{quote(vm_id, safe='')}")
    console.print(plain(f"{vm['id']}: {vm['status']}"))
