"""Command line: ``python3 -m hearth_agent [--listen HOST:PORT] [--home DIR] [options]``."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from hearth_agent import SUPPORTED_PROVIDERS, __version__
from hearth_agent.app import AgentApp, default_login_runners
from hearth_agent.claim import AuthGate, AuthMode, set_system_clock
from hearth_agent.entropy import reseed_kernel
from hearth_agent.errors import ConfigError
from hearth_agent.exec_records import ExecRecords
from hearth_agent.execs import ExecLimits, ExecRegistry, prepare_workspace
from hearth_agent.log import JsonLogger
from hearth_agent.metrics import AgentMetrics
from hearth_agent.server import MAX_CONNECTIONS, AgentHTTPServer
from hearth_agent.storage import CredentialStore
from hearth_agent.updater import AgentUpdater

EXIT_OK = 0
EXIT_LISTEN_FAILED = 1
EXIT_CONFIG = 2
# How long a stop (signal or /admin/restart) waits for requests in flight (a credential write).
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True)
class Options:
    """The parsed command line."""

    host: str
    port: int
    home: Path
    token_file: Path | None
    insecure: bool
    allow_claim: bool
    reseed: bool = True
    workspace: Path | None = None  # None: HOME/workspace
    max_execs: int = ExecLimits.max_running
    updates: Path | None = None  # the install root live updates swap releases in
    run_dir: Path | None = None  # None: the token file's directory

    @property
    def workspace_dir(self) -> Path:
        """Where execs run unless they name another directory."""
        return self.workspace if self.workspace is not None else self.home / "workspace"

    @property
    def exec_records_dir(self) -> Path | None:
        """Where running execs are recorded (None: nowhere, an insecure agent without a run dir)."""
        run_dir = self.run_dir
        if run_dir is None and self.token_file is not None:
            run_dir = self.token_file.parent
        return run_dir / "execs" if run_dir is not None else None


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 asks the kernel for a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def positive_int(value: str) -> int:
    """A whole number above zero."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def parse_options(argv: list[str] | None = None) -> Options:
    """Parse the command line (argparse exits with code 2 on bad usage)."""
    parser = argparse.ArgumentParser(
        prog="python3 -m hearth_agent",
        description="Hearth in-VM agent: stores AI CLI credentials delivered by the controller "
        "and runs commands for it.",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=("0.0.0.0", 8080),
        metavar="HOST:PORT",
        help="address to listen on (default 0.0.0.0:8080; port 0 picks a free port)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path("/root"),
        metavar="DIR",
        help="home directory every credential path is relative to (default /root)",
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory commands run in by default; created 0700 if missing "
        "(default: HOME/workspace)",
    )
    parser.add_argument(
        "--max-execs",
        type=positive_int,
        default=ExecLimits.max_running,
        metavar="N",
        help=f"how many commands may run at once (default {ExecLimits.max_running})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="file holding the bearer token every endpoint but /health requires",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory for the agent's state of this boot: records of running commands, which "
        "an agent started after a crash kills (default: the token file's directory)",
    )
    parser.add_argument(
        "--allow-claim",
        action="store_true",
        help="if the token file is missing or empty, accept one token through POST /init",
    )
    parser.add_argument(
        "--no-reseed",
        action="store_true",
        help="do not reseed the kernel's random number generator on POST /init, nor set the "
        "system clock on POST /init or POST /clock (an agent run outside a VM, for development; "
        "the claim then answers reseeded: false, and the controller refuses such a VM)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without any authentication (development only)",
    )
    parser.add_argument(
        "--updates",
        type=Path,
        default=None,
        metavar="DIR",
        help="accept live updates (POST /agent/update): DIR is the directory on PYTHONPATH "
        "that holds hearth_agent; releases, the agent's PID and the last result are kept there",
    )
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    host, port = args.listen
    return Options(
        host=host,
        port=port,
        home=args.home,
        token_file=args.token_file,
        insecure=args.insecure_no_auth,
        allow_claim=args.allow_claim,
        reseed=not args.no_reseed,
        workspace=args.workspace,
        max_execs=args.max_execs,
        updates=args.updates,
        run_dir=args.run_dir,
    )


def run(options: Options, logger: JsonLogger) -> int:
    """Serve until SIGTERM, SIGINT or POST /admin/restart; return the process exit code."""
    try:
        gate = AuthGate.from_options(
            token_file=options.token_file,
            insecure=options.insecure,
            allow_claim=options.allow_claim,
            logger=logger,
            reseed=reseed_kernel if options.reseed else None,
            set_clock=set_system_clock if options.reseed else None,
        )
    except ConfigError as exc:
        logger.error("config_error", message=exc.message)
        return EXIT_CONFIG
    if gate.mode is AuthMode.INSECURE:
        logger.warning(
            "insecure_no_auth",
            message="authentication is disabled (--insecure-no-auth): anyone who can reach "
            "the agent can read and replace credentials",
        )
    try:
        prepare_workspace(options.workspace_dir)
    except OSError as exc:
        # Credentials still work; execs that rely on the default directory will be refused.
        logger.error("workspace_unavailable", path=str(options.workspace_dir), reason=exc.strerror)
    updater = start_updates(options, logger)
    records = open_exec_records(options, logger)
    execs = ExecRegistry(
        workspace=options.workspace_dir,
        home=options.home,
        logger=logger,
        limits=ExecLimits(max_running=options.max_execs),
        records=records,
    )
    app = AgentApp(
        store=CredentialStore(home=options.home, logger=logger, workspace=options.workspace_dir),
        gate=gate,
        metrics=AgentMetrics(version=__version__, providers=SUPPORTED_PROVIDERS),
        logger=logger,
        execs=execs,
        login_runners=default_login_runners(logger, records=records),
        updater=updater,
        set_clock=set_system_clock if options.reseed else None,
    )
    try:
        server = AgentHTTPServer(
            (options.host, options.port),
            app=app,
            logger=logger,
            # Room for an event stream per exec the cap allows, and the calls around them.
            max_connections=max(MAX_CONNECTIONS, 4 * options.max_execs),
        )
    except OSError as exc:
        logger.error("listen_failed", host=options.host, port=options.port, reason=exc.strerror)
        return EXIT_LISTEN_FAILED

    def stop(signum: int, frame: FrameType | None) -> None:
        server.request_shutdown(reason=signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info(
        "listening",
        host=options.host,
        port=server.port,
        home=str(options.home),
        workspace=str(options.workspace_dir),
        auth=gate.mode.value,
        version=__version__,
        updates=updater is not None,
    )
    app.refresher.start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    # First, so that event streams in flight end with their exit events instead of the grace.
    execs.close()
    unfinished = server.wait_until_idle(SHUTDOWN_GRACE_S)
    if unfinished:
        logger.warning("stopped_with_requests_in_flight", requests=unfinished)
    app.close()
    logger.info("stopped")
    return EXIT_OK


def open_exec_records(options: Options, logger: JsonLogger) -> ExecRecords | None:
    """The records of running execs, once what a previous agent left running is killed; None
    without a directory for them (logged: execs then outlive a crash of the agent)."""
    directory = options.exec_records_dir
    if directory is None:
        return None
    try:
        records = ExecRecords.create(directory, logger=logger)
    except OSError as exc:
        logger.error("exec_records_unavailable", path=str(directory), reason=exc.strerror)
        return None
    records.kill_left_over()
    return records


def start_updates(options: Options, logger: JsonLogger) -> AgentUpdater | None:
    """The updater ``--updates`` asks for, or None; a root it cannot use leaves the agent serving
    without updates (logged) rather than not at all."""
    if options.updates is None:
        return None
    try:
        return AgentUpdater.create(
            root_dir=options.updates, host=options.host, port=options.port, logger=logger
        )
    except ConfigError as exc:
        logger.error("updates_unavailable", message=exc.message)
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m hearth_agent``."""
    return run(parse_options(argv), JsonLogger())


if __name__ == "__main__":
    sys.exit(main())
