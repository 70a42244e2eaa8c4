"""``hearth files put|get|ls|rm``: the files of a CLI VM's workspace, through the API.

``put VM LOCAL REMOTE`` sends a file (its mode kept; ``-`` reads stdin; a pipe such as
``<(cmd)`` is read to its end) or a directory, packed as a tar as it is read and unpacked into
the directory REMOTE. ``get VM REMOTE LOCAL`` saves a file (into LOCAL when that is a directory;
``-`` writes stdout, exiting 141, as SIGPIPE, when its reader goes away) or unpacks a directory
into LOCAL (all of it or, when a member of its tar would write outside LOCAL, nothing:
``invalid_archive``). A path that ends with ``/`` names a directory, made if missing: a file
goes into it under its own name. A download (a file, or a directory's tar) brings at most
``--max-bytes`` (``invalid_archive`` past it, nothing saved). Paths in the VM are relative to
its workspace. On a terminal a transfer shows its progress. Nothing is held in memory whole:
the SDK streams both ways.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from hearth.cli.client import ApiClient
from hearth.cli.common import (
    console,
    ending_on_errors,
    err_console,
    fail,
    output_closed,
    plain,
)
from hearth.errors import InvalidInput
from hearth.sdk import Files, Hearth
from hearth.sdk._transfer import MAX_DOWNLOAD_BYTES

# Called with the bytes moved so far.
ProgressCallback = Callable[[int], None]

files_app = typer.Typer(
    help="Files in a CLI VM's workspace: put, get, ls, rm.", no_args_is_help=True
)

VmArg = Annotated[str, typer.Argument(help="the CLI VM")]


@contextlib.contextmanager
def _files(vm_id: str) -> Iterator[Files]:
    """The VM's files, through the SDK (URL and key as every command finds them); errors end
    the command with their code and message."""
    with ending_on_errors():
        try:
            api = ApiClient()
            with Hearth(api.url, api.key) as client:
                yield client.vms.get(vm_id).files
        except OSError as exc:
            fail(InvalidInput(f"{exc.filename or 'local file'}: {exc.strerror or exc}"))


@contextlib.contextmanager
def _progress(label: str, total: int | None) -> Iterator[ProgressCallback | None]:
    """A progress bar on a terminal (the callback the SDK reports bytes to); none otherwise."""
    if not err_console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(escape(label), total=total)
        yield lambda done: bar.update(task, completed=done)


def _local_size(path: Path) -> int | None:
    """What a put of ``path`` will send, roughly; None when unknown (a pipe, a /proc file)."""
    if path.is_dir():
        return sum(
            os.lstat(os.path.join(top, name)).st_size
            for top, _, names in os.walk(path)
            for name in names
        )
    return (path.stat().st_size or None) if path.is_file() else None


def _names_dir(path: str) -> bool:
    """Whether ``path`` ends with a slash: a directory, whether or not it exists yet."""
    return path.endswith("/")


def _remote_target(local: str, remote: str) -> str:
    """Where in the VM a put of the file ``local`` goes: into ``remote/`` under its own name."""
    if not _names_dir(remote):
        return remote
    if local == "-":
        fail(InvalidInput(f"{remote}: a directory; name the file to write stdin to"))
    return f"{remote}{Path(local).name}"


@contextlib.contextmanager
def _local_dir(local: str) -> Iterator[Path]:
    """``local`` as a download goes to it: a path ending with / is a directory, made if missing
    (its parent must exist, as for ``mkdir``) and removed again if the download fails."""
    target = Path(local)
    made = _names_dir(local) and not target.is_dir()
    if made:
        target.mkdir()
    try:
        yield target
    except BaseException:
        if made:
            with contextlib.suppress(OSError):  # not empty: something was saved after all
                target.rmdir()
        raise


@files_app.command("put")
def put(
    vm_id: VmArg,
    local: Annotated[str, typer.Argument(help="a file or directory here; - for stdin")],
    remote: Annotated[str, typer.Argument(help="where in the VM's workspace")],
    mode: Annotated[
        str | None, typer.Option(help="the file's mode in the VM, octal (default: its own)")
    ] = None,
) -> None:
    """Send a file, or a directory (as a tar), into the CLI VM's workspace."""
    file_mode = None
    if mode is not None:
        if not mode.isdigit() or set(mode) - set("01234567") or int(mode, 8) > 0o777:
            fail(InvalidInput(f"--mode {mode!r}: expected octal permission bits, e.g. 0644"))
        file_mode = int(mode, 8)
    source = None if local == "-" else Path(local)
    target = remote if source is not None and source.is_dir() else _remote_target(local, remote)
    with _files(vm_id) as files:
        if source is None:
            written = files.write(target, sys.stdin.buffer, mode=file_mode)
        else:
            with _progress(f"put {source.name}", _local_size(source)) as progress:
                written = files.write(target, source, mode=file_mode, progress=progress)
    shown = escape(written.path)
    if written.type == "dir":
        console.print(f"{shown}/: {written.entries} entries, {written.size} bytes")
    else:
        console.print(f"{shown}: {written.size} bytes, sha256 {written.sha256}")


@files_app.command("get")
def get(
    vm_id: VmArg,
    remote: Annotated[str, typer.Argument(help="a file or directory in the VM's workspace")],
    local: Annotated[str, typer.Argument(help="where here; - for stdout (a file)")],
    max_bytes: Annotated[
        int,
        typer.Option(
            min=0,
            help="The most a file, or a directory's tar, may bring (a guest could send "
            "without end); 0: no bound.",
        ),
    ] = MAX_DOWNLOAD_BYTES,
) -> None:
    """Fetch a file, or a directory (unpacked here), from the CLI VM's workspace."""
    with _files(vm_id) as files:
        if local == "-":
            try:
                with files.read_stream(remote, max_bytes=max_bytes or None) as stream:
                    for chunk in stream:
                        sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            except BrokenPipeError:  # ``hearth files get VM FILE - | head``
                raise typer.Exit(output_closed()) from None
            return
        with _progress(f"get {remote}", None) as progress, _local_dir(local) as into:
            target = files.download(remote, into, progress=progress, max_bytes=max_bytes or None)
    err_console.print(f"saved {escape(str(target))}")


@files_app.command("ls")
def ls(
    vm_id: VmArg,
    remote: Annotated[str, typer.Argument(help="a directory in the VM's workspace")] = ".",
) -> None:
    """List a directory of the CLI VM's workspace."""
    with _files(vm_id) as files:
        entries = files.list(remote)
    table = Table(box=None, show_header=False, pad_edge=False)
    for entry in entries:
        name = entry.name + ("/" if entry.type == "dir" else "")
        if entry.target is not None:
            name = f"{name} -> {entry.target}"
        when = datetime.fromtimestamp(entry.mtime).strftime("%Y-%m-%d %H:%M")
        table.add_row(f"{entry.mode:04o}", str(entry.size), when, plain(name))
    console.print(table)


@files_app.command("rm")
def rm(
    vm_id: VmArg,
    remote: Annotated[str, typer.Argument(help="a file or directory in the VM's workspace")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="also a directory with things in it")
    ] = False,
) -> None:
    """Remove a file, a symlink or a directory from the CLI VM's workspace."""
    with _files(vm_id) as files:
        files.remove(remote, recursive=recursive)
