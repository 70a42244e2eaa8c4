"""``hearth serve``'s server: the first SIGTERM or SIGINT asks it to stop (its streams end, the
requests still running get ``GRACEFUL_SHUTDOWN_S``); a second of either kind stops it waiting."""

from __future__ import annotations

import signal

from fastapi import FastAPI

from hearth.cli.server import GRACEFUL_SHUTDOWN_S, ControllerServer


def test_the_wait_for_running_requests_is_bounded() -> None:
    server = ControllerServer(FastAPI(), host="127.0.0.1", port=4000)
    assert server.config.timeout_graceful_shutdown == GRACEFUL_SHUTDOWN_S


def test_a_second_sigterm_forces_the_exit_as_a_second_sigint_does() -> None:
    for first, second in [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)]:
        server = ControllerServer(FastAPI(), host="127.0.0.1", port=4000)
        server.handle_exit(first, None)
        assert server.should_exit
        assert not server.force_exit
        server.handle_exit(second, None)
        assert server.force_exit
