"""Terminal links (``TerminalService``'s one-time tokens), the relay's resumes over a stand-in
exec service, and the terminal page's shipped files.

The links are pure bookkeeping over a clock; the service's relay is tested end to end in
``tests/integration/test_api_terminal.py``.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

from hearth import terminal_page
from hearth.agent_client import AgentError, AgentEvent
from hearth.control.terminals import (
    MAX_PENDING_LINKS,
    MAX_PENDING_LINKS_PER_USER,
    OUTPUT_RESUMES,
    Resize,
    TerminalService,
)
from hearth.errors import InvalidInput, ToolMissing, TooManyRunning, Unauthorized
from hearth.links import link_token_hash, link_token_matches, mint_link_token

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RunnableVms:
    """Stands in for ``ExecService.runnable``: every VM may run commands."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    async def runnable(self, vm_id: str, user_id: str | None) -> None:
        self.asked.append((vm_id, user_id))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def terminals(clock: Clock) -> TerminalService:
    return TerminalService(execs=RunnableVms(), link_ttl_s=60.0, shell_timeout_s=60.0, clock=clock)  # type: ignore[arg-type]


async def test_a_link_is_bound_to_its_vm_and_caller_and_opens_once(
    terminals: TerminalService,
) -> None:
    link = await terminals.open_link("vm-1", "ann")
    assert terminals.is_pending(link.terminal_id)

    grant = terminals.claim(link.terminal_id, link.token)

    assert (grant.vm_id, grant.user_id) == ("vm-1", "ann")
    assert not terminals.is_pending(link.terminal_id)
    with pytest.raises(Unauthorized, match="already used"):
        terminals.claim(link.terminal_id, link.token)


async def test_a_wrong_token_is_refused_and_does_not_spend_the_link(
    terminals: TerminalService,
) -> None:
    link = await terminals.open_link("vm-1", None)

    with pytest.raises(Unauthorized):
        terminals.claim(link.terminal_id, mint_link_token())
    with pytest.raises(Unauthorized):
        terminals.claim("term-other", link.token)

    assert terminals.claim(link.terminal_id, link.token).user_id is None


async def test_a_link_expires_after_its_ttl(terminals: TerminalService, clock: Clock) -> None:
    link = await terminals.open_link("vm-1", "ann")
    clock.now += 60.0

    assert not terminals.is_pending(link.terminal_id)
    with pytest.raises(Unauthorized, match="expired"):
        terminals.claim(link.terminal_id, link.token)
    with pytest.raises(Unauthorized, match="already used"):  # and it is gone
        terminals.claim(link.terminal_id, link.token)


async def test_links_are_distinct_and_only_their_hash_is_kept(
    terminals: TerminalService,
) -> None:
    links = [await terminals.open_link("vm-1", "ann") for _ in range(3)]

    assert len({link.token for link in links}) == 3
    assert len({link.terminal_id for link in links}) == 3
    kept = repr(vars(terminals))
    for link in links:
        assert link.token not in kept
        assert link_token_hash(link.token) in kept


async def test_expired_links_make_room_and_a_flood_is_refused(
    terminals: TerminalService, clock: Clock
) -> None:
    for n in range(MAX_PENDING_LINKS):
        await terminals.open_link("vm-1", f"user-{n % 64}")
    with pytest.raises(TooManyRunning):
        await terminals.open_link("vm-1", "ann")

    clock.now += 61.0
    assert terminals.is_pending((await terminals.open_link("vm-1", "ann")).terminal_id)


async def test_one_callers_flood_leaves_room_for_the_others(terminals: TerminalService) -> None:
    for _ in range(MAX_PENDING_LINKS_PER_USER):
        await terminals.open_link("vm-1", "mallory")
    with pytest.raises(TooManyRunning, match="of this caller"):
        await terminals.open_link("vm-1", "mallory")
    assert terminals.is_pending((await terminals.open_link("vm-2", "ann")).terminal_id)


async def test_close_forgets_unopened_links(terminals: TerminalService) -> None:
    link = await terminals.open_link("vm-1", "ann")

    await terminals.close()

    with pytest.raises(Unauthorized):
        terminals.claim(link.terminal_id, link.token)


def test_token_matching() -> None:
    token = mint_link_token()
    assert len(token) >= 32
    assert link_token_matches(token, link_token_hash(token))
    assert not link_token_matches(token, link_token_hash(token + "x"))
    assert not link_token_matches(token, None)
    assert not link_token_matches(token, "")


async def test_a_token_utf8_cannot_encode_is_refused_like_a_wrong_one(
    terminals: TerminalService,
) -> None:
    # JSON may carry a lone surrogate ("\\ud800"), which no token minted here contains.
    link = await terminals.open_link("vm-1", "ann")

    assert not link_token_matches("\ud800", link_token_hash(link.token))
    with pytest.raises(Unauthorized):
        terminals.claim(link.terminal_id, "\ud800")
    assert terminals.is_pending(link.terminal_id)  # and the link is not spent


@pytest.mark.parametrize(
    "message",
    [{"cols": 0, "rows": 1}, {"cols": 1, "rows": 1001}, {"cols": "80", "rows": 24}, [80, 24]],
)
def test_a_size_out_of_range_is_refused(message: object) -> None:
    with pytest.raises(InvalidInput):
        Resize.of(message)


# --- the page's files -----------------------------------------------------------------------


def test_the_page_ships_in_the_package_data_without_node_modules() -> None:
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["hearth"]
    package_root = terminal_page.PAGE_DIR.parents[2]
    for path in terminal_page.PAGE_DIR.iterdir():
        relative = path.relative_to(package_root).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
    assert not (terminal_page.PAGE_DIR / "node_modules").exists()


def test_xterm_is_pinned_to_exact_versions_in_the_manifest_and_the_lockfile() -> None:
    manifest = json.loads((terminal_page.PAGE_DIR / "package.json").read_text())
    lock = json.loads((terminal_page.PAGE_DIR / "package-lock.json").read_text())
    pinned = manifest["dependencies"]
    assert set(pinned) == set(terminal_page.PACKAGES)
    for name, version in pinned.items():
        assert version[0].isdigit(), f"{name} {version} is a range, not a pin"
        locked = lock["packages"][f"node_modules/{name}"]
        assert locked["version"] == version
        assert locked["integrity"].startswith("sha512-")


def test_a_missing_install_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing, match=r"-m hearth\.terminal_page"):
        terminal_page.require_installed(tmp_path)
    target = terminal_page.installed_dir(tmp_path)
    for name in terminal_page.PACKAGES:
        (target / "node_modules" / name).mkdir(parents=True)
        (target / "node_modules" / name / "package.json").write_text("{}")
    terminal_page.require_installed(tmp_path)
    assert terminal_page.xterm_dir(tmp_path) == target / "node_modules" / "@xterm"


def test_the_page_loads_only_what_the_controller_serves() -> None:
    page = (terminal_page.PAGE_DIR / terminal_page.PAGE).read_text()
    assert "/xterm/xterm/lib/xterm.js" in page
    assert "/xterm/addon-fit/lib/addon-fit.js" in page
    assert "http://" not in page
    assert "https://" not in page
    assert "<script>" not in page  # no inline script: the page's CSP allows none


class BreakingExecs(RunnableVms):
    """Stands in for ``ExecService`` under a shell whose event stream breaks after each event,
    ``breaks`` times, then ends with its exit."""

    def __init__(self, breaks: int) -> None:
        super().__init__()
        self.breaks = breaks
        self.killed: list[str] = []

    async def start(self, vm_id: str, user_id: str | None, request: object) -> dict[str, object]:
        return {"execId": "x1", "pid": 7}

    async def follow(self, vm_id: str, exec_id: str, *, after: int) -> AsyncIterator[AgentEvent]:
        if after >= self.breaks:
            yield AgentEvent(id=after + 1, type="exit", data={"code": 0})
            return
        yield AgentEvent(id=after + 1, type="stdout", data={"data": "x"})
        raise AgentError("the agent's stream broke")

    async def kill_once_awake(self, vm_id: str, exec_id: str, signal: str) -> None:
        self.killed.append(exec_id)

    async def asleep(self, vm_id: str) -> bool:
        return False


class QuietPage:
    """A page that types nothing and stays; what it was sent."""

    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.statuses: list[dict[str, object]] = []

    async def receive(self) -> bytes | Resize | None:
        await asyncio.Event().wait()
        return None

    async def send_output(self, data: bytes) -> None:
        self.output.append(data)

    async def send_status(self, message: dict[str, object]) -> None:
        self.statuses.append(message)


async def test_a_terminal_rides_out_breaks_that_each_come_after_output(clock: Clock) -> None:
    # Breaks in a row end a terminal; breaks over a long life, each after output, do not.
    execs = BreakingExecs(breaks=OUTPUT_RESUMES + 3)
    terminals = TerminalService(execs=execs, link_ttl_s=60.0, shell_timeout_s=60.0, clock=clock)  # type: ignore[arg-type]
    link = await terminals.open_link("vm-1", "ann")
    page = QuietPage()

    async with asyncio.timeout(30):
        await terminals.run(terminals.claim(link.terminal_id, link.token), page, Resize(80, 24))

    assert len(page.output) == OUTPUT_RESUMES + 3
    assert page.statuses[-1] == {"type": "exit", "code": 0}
    assert execs.killed == ["x1"]
