"""``hearth bench vm``, ``api``, ``auth``, ``restarts`` and ``run``: run a benchmark, print tables,
write JSON.

This module does not import ``hearth.cli`` (which registers ``bench_app``), so importing either
first works.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, TypedDict, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth.bench.api import ApiBenchOptions, run_api_bench
from hearth.bench.auth import AuthBenchOptions, run_auth_bench
from hearth.bench.auth_report import auth_document, auth_tables
from hearth.bench.oidc_install import install as install_oidc_server
from hearth.bench.report import (
    api_document,
    api_tables,
    print_tables,
    vm_document,
    vm_tables,
    write_json,
)
from hearth.bench.restarts import (
    POINTS,
    RestartsOptions,
    restarts_document,
    restarts_tables,
    run_restarts_bench,
)
from hearth.bench.run import (
    DEFAULT_BYTES,
    DEFAULT_N,
    DEFAULT_ROUNDS,
    RunBenchOptions,
    run_run_bench,
)
from hearth.bench.run_first_event import DEFAULT_PROVIDERS, DEFAULT_RUN_ROUNDS, RunPartOptions
from hearth.bench.run_report import run_document, run_tables
from hearth.bench.vm import VmBenchOptions, run_vm_bench
from hearth.config import Settings
from hearth.errors import HearthError, NotAnImage
from hearth.images.build import default_output_dir
from hearth.images.manifest import ImageDir
from hearth.images.recipes import get_recipe
from hearth.logging import configure_logging
from hearth.progress import Progress, default_progress
from hearth.vm.types import VmSpec
from hearth_agent.wire import Provider

bench_app = typer.Typer(
    help="Measure Hearth: VM starts against the original controller's method; API latency; "
    "the auth flow's overhead; exec and file transfers against the VM's own paths.",
    no_args_is_help=True,
)
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
OptionsT = TypeVar("OptionsT")  # a bench's options
OptionsT_contra = TypeVar("OptionsT_contra", contravariant=True)
# What the bench prints (notes, error messages, machine details, paths) is text, never markup.
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False)


JsonFile = Annotated[
    Path | None, typer.Option("--json", help="Also write the results as JSON here.")
]
CliImage = Annotated[
    Path | None,
    typer.Option(help="CLI VM image (default: the minimal image under the state dir)."),
]
BrowserImage = Annotated[
    Path | None,
    typer.Option(help="Browser VM image (default: the browser image under the state dir)."),
]
TemplateDir = Annotated[
    Path | None,
    typer.Option(
        help="Snapshot templates to use, and keep what is built there (e.g. a controller's "
        "HEARTH_TEMPLATE_DIR; default: built afresh under the state dir)."
    ),
]


def _state_dir_option(what: str) -> Any:
    """The ``--state-dir`` option of a bench whose state dir is ``what``."""
    return typer.Option(help=f"{what} (default: a fresh temp dir, removed after).")


@bench_app.command("vm")
def bench_vm(
    n: Annotated[int, typer.Option("--n", min=1, help="Samples per start path.")] = 5,
    concurrency: Annotated[
        int, typer.Option(min=1, help="VMs created at once in the concurrent phase.")
    ] = 3,
    image: Annotated[
        Path | None,
        typer.Option(help="Image directory (default: the minimal image under the state dir)."),
    ] = None,
    json_file: JsonFile = None,
    state_dir: Annotated[Path | None, _state_dir_option("Where the bench's VMs live")] = None,
) -> None:
    """VM starts by every path, next to the original controller's method, in one run.

    Cold boot, snapshot restore, warm-pool hand-out, concurrent creates, disk and memory per VM,
    destroy; and the baseline: a full copy of the image, a cold boot and 2 s health polls.
    """
    settings = _load_settings()
    image_dir = _built_image(settings, image, "minimal")
    command = ["hearth", "bench", "vm", "--n", str(n), "--concurrency", str(concurrency)]
    if image is not None:
        command += ["--image", str(image)]
    options = partial(
        VmBenchOptions,
        image=image_dir,
        n=n,
        concurrency=concurrency,
        spec=VmSpec(vcpus=settings.default_vcpus, mem_mib=settings.default_mem_mib),
    )
    result = _measure(run_vm_bench, options, state_dir)
    _report(result, vm_tables, vm_document, json_file=json_file, command=command)


@bench_app.command("api")
def bench_api(
    n: Annotated[int, typer.Option("--n", min=1, help="Requests per load phase.")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1, help="Workers in the closed-loop phase.")] = 10,
    rate: Annotated[
        float, typer.Option(min=1, help="Requests per second in the open-loop phase.")
    ] = 500.0,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="HEARTH_BENCH_DATABASE_URL",
            help="A PostgreSQL server to measure on too (a scratch database is created on it "
            "and dropped after). Without one, SQLite only.",
        ),
    ] = None,
    json_file: JsonFile = None,
    state_dir: Annotated[Path | None, _state_dir_option("The controllers' state dirs")] = None,
) -> None:
    """API throughput and p50/p99 latency, on SQLite and PostgreSQL.

    GET /api/vms/{id} (and GET /api/auth/session/{id} once the app has it) against a real
    controller process, in a closed loop and on a fixed-rate schedule.
    """
    _load_settings()
    command = ["hearth", "bench", "api", "--n", str(n), "--concurrency", str(concurrency)]
    command += ["--rate", f"{rate:g}"]
    options = partial(
        ApiBenchOptions,
        n=n,
        concurrency=concurrency,
        rate_rps=rate,
        warmup=min(200, n),
        postgres_url=database_url or None,
    )
    result = _measure(run_api_bench, options, state_dir)
    for note in result.notes:
        console.print(Text.assemble(("note", "yellow"), f" {note}"))
    _report(result, api_tables, api_document, json_file=json_file, command=command)


class _LoginParts(TypedDict):
    cli_image: ImageDir
    browser_image: ImageDir
    oidc_server_dir: Path
    template_dir: Path | None


def _login_parts(
    cli_image: Path | None,
    browser_image: Path | None,
    oidc_server_dir: Path | None,
    template_dir: Path | None,
) -> _LoginParts:
    """What a bench of logins runs: its two images (built ones, or exit 1 saying how to build
    them), the OAuth server (installed under the cache dir unless given) and where the
    templates are."""
    settings = _load_settings()
    cli_image_dir = _built_image(settings, cli_image, "minimal", role="CLI")
    browser_image_dir = _built_image(settings, browser_image, "browser", role="Browser")
    if oidc_server_dir is None:
        try:
            oidc_server_dir = install_oidc_server(settings.cache_dir)
        except HearthError as exc:
            _fail(exc)
    return _LoginParts(
        cli_image=cli_image_dir,
        browser_image=browser_image_dir,
        oidc_server_dir=oidc_server_dir.absolute(),
        template_dir=template_dir.absolute() if template_dir else None,
    )


@bench_app.command("auth")
def bench_auth(
    n: Annotated[int, typer.Option("--n", min=1, help="Measured flows (after one warm-up).")] = 5,
    cli_image: CliImage = None,
    browser_image: BrowserImage = None,
    oidc_server_dir: Annotated[
        Path | None,
        typer.Option(
            help="The test OAuth server (server.mjs with its node_modules; default: the one "
            "shipped with Hearth, its dependencies installed with npm ci under HEARTH_CACHE_DIR "
            "on first use)."
        ),
    ] = None,
    json_file: JsonFile = None,
    state_dir: Annotated[Path | None, _state_dir_option("The controller's state dir")] = None,
    template_dir: TemplateDir = None,
) -> None:
    """The controller's own time in an auth flow: total minus the user's time, by stage.

    A real controller, a real OAuth server (node + oidc-provider) and a real Browser VM, with a
    scripted user signing in over the Browser VM's DevTools.
    """
    command = ["hearth", "bench", "auth", "--n", str(n)]
    for flag, given in (("--cli-image", cli_image), ("--browser-image", browser_image)):
        if given is not None:
            command += [flag, str(given)]
    if oidc_server_dir is not None:
        command += ["--oidc-server-dir", str(oidc_server_dir)]
    if template_dir is not None:
        command += ["--template-dir", str(template_dir)]
    login = _login_parts(cli_image, browser_image, oidc_server_dir, template_dir)
    result = _measure(run_auth_bench, partial(AuthBenchOptions, n=n, **login), state_dir)
    _report(result, auth_tables, auth_document, json_file=json_file, command=command)


@bench_app.command("restarts")
def bench_restarts(
    n: Annotated[int, typer.Option("--n", min=1, help="Logins per restart point.")] = 3,
    point: Annotated[
        list[str] | None,
        typer.Option(help=f"Restart points (default all: {', '.join(POINTS)}); repeatable."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the random stop moments.")] = None,
    cli_image: CliImage = None,
    browser_image: BrowserImage = None,
    json_file: JsonFile = None,
    state_dir: Annotated[Path | None, _state_dir_option("The controller's state dir")] = None,
    template_dir: TemplateDir = None,
) -> None:
    """Logins that outlive their controller: stopped (kill -9, or SIGTERM between the sign-in
    pages) at a random moment of each stage, restarted, the user signs in; how many complete.

    A real controller, OAuth server and VMs, as ``hearth bench auth``; long: not run in CI.
    """
    command = ["hearth", "bench", "restarts", "--n", str(n)]
    command += [arg for p in point or () for arg in ("--point", p)]
    if template_dir is not None:
        command += ["--template-dir", str(template_dir)]
    login = _login_parts(cli_image, browser_image, None, template_dir)
    options = partial(RestartsOptions, n=n, points=tuple(point or POINTS), seed=seed, **login)
    result = _measure(run_restarts_bench, options, state_dir)
    _report(result, restarts_tables, restarts_document, json_file=json_file, command=command)


@bench_app.command("run")
def bench_run(
    n: Annotated[
        int, typer.Option("--n", min=1, help="Exec round trips (and agent /health calls).")
    ] = DEFAULT_N,
    size: Annotated[
        int, typer.Option("--bytes", min=1, help="Bytes per transfer (default 64 MiB).")
    ] = DEFAULT_BYTES,
    rounds: Annotated[
        int, typer.Option(min=1, help="Rounds of transfers; the report takes their p50.")
    ] = DEFAULT_ROUNDS,
    image: Annotated[
        Path | None,
        typer.Option(help="CLI VM image (default: the minimal image under the state dir)."),
    ] = None,
    runs: Annotated[
        bool,
        typer.Option(
            "--runs/--no-runs",
            help="Also measure each vendor CLI's first event through Hearth against the CLI "
            "started directly (needs the cli image).",
        ),
    ] = True,
    run_image: Annotated[
        Path | None,
        typer.Option(
            help="Image with the vendor CLIs for the runs; the bench boots a copy that trusts "
            "its stand-ins' CA (default: the cli image under the state dir)."
        ),
    ] = None,
    providers: Annotated[
        list[Provider] | None,
        typer.Option("--provider", help="A vendor CLI to run (repeat it; default: all three)."),
    ] = None,
    run_rounds: Annotated[
        int, typer.Option(min=1, help="Rounds of runs per CLI, one each way per round.")
    ] = DEFAULT_RUN_ROUNDS,
    json_file: JsonFile = None,
    state_dir: Annotated[Path | None, _state_dir_option("The controllers' state dir")] = None,
) -> None:
    """Exec, file transfers and runs through Hearth, against the same VM's own paths.

    Exec round trip against the VM agent's own /health; exec output, file upload and download
    against a raw TCP stream out of and into the same VM; a run's first event against the same
    vendor CLI started through the VM's agent (against loopback stand-ins of the providers).
    """
    settings = _load_settings()
    image_dir = _built_image(settings, image, "minimal", role="CLI")
    command = ["hearth", "bench", "run", "--n", str(n), "--bytes", str(size)]
    command += ["--rounds", str(rounds)]
    if image is not None:
        command += ["--image", str(image)]
    run_options = None
    if runs:
        try:
            run_options = RunPartOptions(
                image=_built_image(settings, run_image, "cli", role="the runs'"),
                providers=tuple(dict.fromkeys(providers or DEFAULT_PROVIDERS)),
                rounds=run_rounds,
            )
        except HearthError as exc:
            _fail(exc)
        command += [f"--provider={p.value}" for p in providers or ()]
        command += ["--run-rounds", str(run_rounds)]
        command += ["--run-image", str(run_image)] if run_image is not None else []
    else:
        command += ["--no-runs"]
    options = partial(
        RunBenchOptions,
        n=n,
        bytes=size,
        rounds=rounds,
        image=image_dir,
        vmm=settings.vmm,
        qemu_accel=settings.qemu_accel,
        runs=run_options,
    )
    result = _measure(run_run_bench, options, state_dir)
    _report(result, run_tables, run_document, json_file=json_file, command=command)


def _built_image(
    settings: Settings, given: Path | None, recipe: str, *, role: str = ""
) -> ImageDir:
    """The image at ``given`` (default: ``recipe``'s build output); exit 1 if it is not built."""
    image_dir = ImageDir((given or default_output_dir(settings, get_recipe(recipe))).absolute())
    if image_dir.manifest is None:
        for_role = f" for {role} VMs" if role else ""
        _fail(
            NotAnImage(
                f"{image_dir.path} holds no built image{for_role}; "
                f"run: hearth image build --recipe {recipe}"
            )
        )
    return image_dir


class _Bench(Protocol[OptionsT_contra, T_co]):
    """A benchmark: ``run_*_bench(options, progress=...)``."""

    def __call__(
        self, options: OptionsT_contra, *, progress: Progress
    ) -> Coroutine[Any, Any, T_co]: ...


def _measure(
    bench: _Bench[OptionsT, T], options: Callable[..., OptionsT], state_dir: Path | None
) -> T:
    """Run ``bench`` (see :func:`_run`) on ``options(state_dir=...)``: ``state_dir`` (kept), or a
    fresh temp dir removed before this returns."""
    with _scratch_dir(state_dir) as root:
        return _run(bench(options(state_dir=root), progress=default_progress("bench")))


def _report(
    result: T,
    tables: Callable[[T], list[Table]],
    document: Callable[..., dict[str, object]],
    *,
    json_file: Path | None,
    command: list[str],
) -> None:
    """Print ``result``'s tables; with ``json_file``, write its document there too."""
    print_tables(console, tables(result))
    if json_file is not None:
        write_json(json_file, document(result, command=shlex.join(command)))
        console.print(Text(f"wrote {json_file}", style="dim"))


def _run(bench: Coroutine[Any, Any, T]) -> T:
    """Run ``bench``; SIGTERM cancels it like Ctrl-C does, so its teardown still runs.

    A HearthError ends the command with exit code 1 (the scratch dir is still removed).
    """

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await bench
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except HearthError as exc:
        _fail(exc)
    except asyncio.CancelledError:
        err_console.print(
            Text.assemble(("interrupted", "red"), "; what the bench started has been destroyed")
        )
        raise typer.Exit(130) from None


def _load_settings() -> Settings:
    """Settings from the environment; logging quiet on a terminal (the progress display speaks)."""
    try:
        settings = Settings.from_env()
    except HearthError as exc:
        _fail(exc)
    level = logging.WARNING if sys.stderr.isatty() else logging.INFO
    configure_logging(json=settings.log_json, level=level)
    return settings


@contextmanager
def _scratch_dir(given: Path | None) -> Iterator[Path]:
    """The given directory (kept afterwards), or a fresh temp dir removed on exit."""
    if given is not None:
        given = given.absolute()
        given.mkdir(mode=0o700, parents=True, exist_ok=True)
        yield given
        return
    made = Path(tempfile.mkdtemp(prefix="hearth-bench-"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def _fail(exc: HearthError) -> NoReturn:
    err_console.print(Text.assemble(("error", "red"), f" ({exc.code}): {exc.message}"))
    raise typer.Exit(1)
