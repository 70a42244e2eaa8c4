"""Live agent updates on a real agent under a respawn loop (as hearth-init runs it): a good bundle
swapped in, broken ones rolled back by the guard on its own, refused ones changing nothing."""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from hearth.bench.standins.documents import sample_document
from hearth_agent import __version__ as RUNNING_VERSION
from tests.integration.update_fixtures import *  # noqa: F403
from tests.integration.update_fixtures import (
    RESTART_SLACK_S,
    SupervisedAgent,
    agent_files,
    bundle,
    file_member,
    push,
    stamped,
    tar_gz,
    tree,
    wait_until,
)

if TYPE_CHECKING:
    from conftest import AgentProcess

NEW = "0.1.1"
SHORT_DEADLINE_S = 5.0
Files = dict[str, bytes]


def release_of(version: str, body: bytes) -> str:
    """The release directory the agent names a pushed bundle."""
    return f"{version}-{hashlib.sha256(body).hexdigest()[:12]}"


def link_target(agent: SupervisedAgent) -> str:
    """Where ``ROOT/hearth_agent`` points."""
    return os.readlink(agent.root / "hearth_agent")


def guard_records(agent: SupervisedAgent, event: str) -> list[str]:
    """The log lines of one event (agents and guards write to the same log)."""
    return [line for line in agent.log_text().splitlines() if f'"event": "{event}"' in line]


# --- a good bundle ------------------------------------------------------------------------------


def test_a_good_bundle_is_swapped_in_and_keeps_the_token_and_the_credentials(
    supervised_agent: SupervisedAgent,
) -> None:
    agent = supervised_agent
    document = sample_document("claude_code", marker="before-the-update")
    body = bundle(stamped(agent_files(), NEW))
    with agent.client() as client:
        assert client.put("/credentials/claude_code", json=document).status_code == 200
        version = client.get("/version").json()
        assert (version["updates"], version["update"]) == (True, None)
        response = push(client, body, version=NEW)

    release = release_of(NEW, body)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "updating": True,
        "from": RUNNING_VERSION,
        "to": NEW,
        "release": release,
    }
    agent.wait_for_version(NEW, RESTART_SLACK_S)
    result = agent.wait_for_result()
    assert (result["from"], result["to"], result["ok"], result["error"]) == (
        RUNNING_VERSION,
        NEW,
        True,
        None,
    )
    with agent.client() as client:
        assert client.get("/version").json()["version"] == NEW  # the same token still works
        stored = client.get("/credentials/claude_code", params={"content": "true"})
        assert stored.json()["document"] == document
    assert link_target(agent) == f"releases/{release}/hearth_agent"
    assert sorted(p.name for p in (agent.root / "releases").iterdir()) == [
        f"{RUNNING_VERSION}-base",
        release,
    ]
    assert (agent.root / "releases" / f"{RUNNING_VERSION}-base" / "hearth_agent").is_dir()
    wait_until(lambda: not (agent.root / "update.lock").exists(), 5.0, "the guard's lock gone")
    assert agent.guard_pid() is None


def test_a_second_update_keeps_only_the_current_and_the_previous_release(
    supervised_agent: SupervisedAgent,
) -> None:
    agent = supervised_agent
    first = bundle(stamped(agent_files(), NEW))
    second = bundle(stamped(agent_files(), "0.1.2"))
    with agent.client() as client:
        assert push(client, first, version=NEW).status_code == 202
    agent.wait_for_version(NEW, RESTART_SLACK_S)
    assert agent.wait_for_result()["ok"] is True
    wait_until(lambda: agent.guard_pid() is None, 5.0, "the first guard's end")
    with agent.client() as client:
        assert push(client, second, version="0.1.2").status_code == 202
    agent.wait_for_version("0.1.2", RESTART_SLACK_S)
    assert agent.wait_for_result()["ok"] is True
    wait_until(lambda: agent.guard_pid() is None, 5.0, "the second guard's end")

    assert sorted(p.name for p in (agent.root / "releases").iterdir()) == sorted(
        [release_of(NEW, first), release_of("0.1.2", second)]
    )
    with agent.client() as client:
        again = push(client, second, version="0.1.2")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_current"


# --- broken bundles, rolled back by the guard ----------------------------------------------------


def exits_at_start(files: Files) -> Files:
    """A build whose ``__main__`` exits with code 3 before anything else."""
    return {**files, "__main__.py": b"import sys\n\nsys.exit(3)\n"}


def hangs_before_listening(files: Files) -> Files:
    """A build that records its PID, then sleeps where it would start listening."""
    hang = (
        b"\n\ndef _hang(self, *args, **kwargs):\n"
        b"    import time\n\n    time.sleep(3600)\n\n\n"
        b"AgentHTTPServer.__init__ = _hang\n"
    )
    return {**files, "server.py": files["server.py"] + hang}


def never_healthy(files: Files) -> Files:
    """A build that serves everything but never calls itself healthy on /health."""
    starting = (
        b"\n\ndef _starting(self, request, params):\n"
        b'    return json_response(200, {"status": "starting", "version": __version__})\n\n\n'
        b"AgentApp._health = _starting\n"
    )
    return {**files, "app.py": files["app.py"] + starting}


def wait_for_rollback(agent: SupervisedAgent, pushed_at: float) -> dict[str, object]:
    """Wait for the guard's failed result, then for the previous version healthy again."""
    result = agent.wait_for_result(SHORT_DEADLINE_S + RESTART_SLACK_S)
    health = agent.wait_for_version(RUNNING_VERSION, RESTART_SLACK_S)
    elapsed = time.monotonic() - pushed_at
    assert elapsed < SHORT_DEADLINE_S + RESTART_SLACK_S
    assert health["uptime_s"] < elapsed, "the agent that took the update is still running"
    return result


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        (exits_at_start, "no answer from /health (connection refused)"),
        (hangs_before_listening, "no answer from /health (connection refused)"),
    ],
    ids=["exits_at_start", "hangs_before_listening"],
)
def test_a_build_that_never_answers_is_rolled_back_by_the_guard(
    supervised_agent: SupervisedAgent, broken: Callable[[Files], Files], problem: str
) -> None:
    agent = supervised_agent
    body = bundle(broken(stamped(agent_files(), NEW)))
    with agent.client() as client:
        response = push(client, body, version=NEW, deadline_s=SHORT_DEADLINE_S)
    assert response.status_code == 202, response.text
    pushed_at = time.monotonic()

    result = wait_for_rollback(agent, pushed_at)

    assert (result["from"], result["to"], result["ok"]) == (RUNNING_VERSION, NEW, False)
    assert result["error"] == f"version {NEW} not healthy within 5 s: {problem}"
    assert link_target(agent) == f"releases/{RUNNING_VERSION}-base/hearth_agent"
    with agent.client() as client:
        assert client.get("/version").json()["update"] == result
    assert guard_records(agent, "update_rolled_back")


def test_a_build_never_healthy_blocks_other_updates_until_its_guard_rolls_it_back(
    supervised_agent: SupervisedAgent,
) -> None:
    agent = supervised_agent
    body = bundle(never_healthy(stamped(agent_files(), NEW)))
    with agent.client() as client:
        assert push(client, body, version=NEW, deadline_s=SHORT_DEADLINE_S).status_code == 202
    pushed_at = time.monotonic()
    wait_until(
        lambda: (agent.health() or {}).get("status") == "starting", 5.0, "the new build serving"
    )
    guard = agent.guard_pid()
    assert guard is not None
    with agent.client() as client:
        assert client.get("/version").json()["update"]["ok"] is None  # still watched
        other = push(client, bundle(stamped(agent_files(), "0.1.2")), version="0.1.2")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "update_in_progress"

    result = wait_for_rollback(agent, pushed_at)

    assert result["ok"] is False
    assert result["error"] == (
        f"version {NEW} not healthy within 5 s: /health says status 'starting'"
    )
    assert link_target(agent) == f"releases/{RUNNING_VERSION}-base/hearth_agent"
    stopped = guard_records(agent, "update_rolled_back")
    assert len(stopped) == 1
    assert '"stopped_pids": []' not in stopped[0]  # it stopped the unhealthy agent itself


def test_a_guard_that_cannot_start_leaves_the_running_release_in_place(
    supervised_agent: SupervisedAgent,
) -> None:
    agent = supervised_agent
    # The agent imported the guard's module already; the guard's own python reads this file.
    (agent.root / "hearth_agent" / "update_guard.py").write_bytes(b"raise SystemExit(7)\n")
    uptime = agent.wait_for_version(RUNNING_VERSION, 1.0)["uptime_s"]
    body = bundle(stamped(agent_files(), NEW))
    with agent.client() as client:
        response = push(client, body, version=NEW)
        result = client.get("/version").json()["update"]

    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "update_failed",
        "message": "the guard exited with status 7; nothing was swapped",
    }
    assert link_target(agent) == f"releases/{RUNNING_VERSION}-base/hearth_agent"
    assert [p.name for p in (agent.root / "releases").iterdir()] == [f"{RUNNING_VERSION}-base"]
    assert (result["to"], result["ok"], result["error"]) == (
        NEW,
        False,
        "the guard exited with status 7",
    )
    assert agent.wait_for_version(RUNNING_VERSION, 1.0)["uptime_s"] > uptime  # never restarted


# --- refused bundles change nothing ---------------------------------------------------------------


def test_a_digest_mismatch_is_refused_and_changes_nothing(
    supervised_agent: SupervisedAgent,
) -> None:
    agent = supervised_agent
    before = tree(agent.root)
    with agent.client() as client:
        response = push(client, bundle(stamped(agent_files(), NEW)), version=NEW, sha256="0" * 64)
        assert client.get("/version").json()["update"] is None

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "digest_mismatch"
    assert tree(agent.root) == before


def symlink_member() -> tuple[tarfile.TarInfo, None]:
    """A symlink named like a module."""
    info = tarfile.TarInfo("hearth_agent/providers.py")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info, None


def directory_member() -> tuple[tarfile.TarInfo, None]:
    """The package directory as a member of its own."""
    info = tarfile.TarInfo("hearth_agent")
    info.type = tarfile.DIRTYPE
    return info, None


def good_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of a good 0.1.1 bundle."""
    files = stamped(agent_files(), NEW)
    return [file_member(f"hearth_agent/{name}", data) for name, data in files.items()]


BAD_BUNDLES: dict[str, Callable[[], bytes]] = {
    "parent_path": lambda: tar_gz([*good_members(), file_member("../x.py", b"")]),
    "nested_parent_path": lambda: tar_gz(
        [*good_members(), file_member("hearth_agent/../../x.py", b"")]
    ),
    "symlink_member": lambda: tar_gz([*good_members()[1:], symlink_member()]),
    "directory_member": lambda: tar_gz([directory_member(), *good_members()]),
    "not_python": lambda: tar_gz([*good_members(), file_member("hearth_agent/notes.txt", b"")]),
    "missing_main": lambda: bundle(
        {k: v for k, v in stamped(agent_files(), NEW).items() if k != "__main__.py"}
    ),
    "syntax_error": lambda: bundle({**stamped(agent_files(), NEW), "app.py": b"def (:\n"}),
    "other_version": lambda: bundle(stamped(agent_files(), "0.1.2")),
    "not_gzip": lambda: b"hearth_agent/__init__.py" + b"\0" * 1000,
}


@pytest.mark.parametrize("make", BAD_BUNDLES.values(), ids=BAD_BUNDLES.keys())
def test_a_bad_bundle_is_refused_as_invalid_and_changes_nothing(
    supervised_agent: SupervisedAgent, make: Callable[[], bytes]
) -> None:
    agent = supervised_agent
    before = tree(agent.root)
    with agent.client() as client:
        response = push(client, make(), version=NEW)
        assert client.get("/version").json()["update"] is None

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_bundle"
    assert tree(agent.root) == before
    assert agent.health() is not None


def test_an_agent_without_updates_refuses_with_409_and_says_so_in_version(
    agent: AgentProcess, agent_client: httpx.Client
) -> None:
    body = bundle(stamped(agent_files(), NEW))

    response = push(agent_client, body, version=NEW)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "updates_disabled"
    version = agent_client.get("/version").json()
    assert (version["updates"], version["update"]) == (False, None)
    assert agent.process.poll() is None
