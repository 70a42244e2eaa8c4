"""The real vendor CLIs, run headless on this host against their providers' stand-ins.

Each test runs the pinned CLI (claude, codex, gemini from the vendor tree the cli image ships)
as the current user, with HOME holding the credential document written the way the in-VM agent
writes it, its only way out a real :class:`hearth.network.egress.EgressProxy` on loopback whose
allowlist is the provider's production list and whose pins send those hosts to the stand-in,
and a test CA that only this run trusts. Nothing leaves the machine: the stand-ins answer in the
providers' wire formats, and any other host is refused by the proxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hearth.bench.standins.documents import sample_document
from hearth.bench.standins.scenarios import Scenario
from hearth.bench.standins.vendors import VENDORS, VendorCli
from hearth.images.vendor import GUEST_VENDOR_DIR, ensure_vendor_tree
from hearth.network.allowlist import AllowRule
from hearth.network.provider_hosts import PROVIDER_API_HOSTS
from hearth.runs import RunEvent, RunFailure, parser_for
from hearth_agent.wire import Provider
from tests.conftest import require_tools
from tests.standins import headless
from tests.standins.rig import CliRun, StandInRig

pytestmark = pytest.mark.timeout(300)

RUN_TIMEOUT_S = 90.0
RIGHT_BEARER = "Bearer right-token"
PROMPT = "Say hello"

# How each CLI words the provider's refusals (the stand-in sends the providers' real bodies).
RATE_LIMIT_WORDS = {
    Provider.CLAUDE_CODE: "You've hit your 5-hour limit",
    Provider.CODEX: "You\u2019ve hit your usage limit",
    Provider.GEMINI_CLI: "Quota exceeded",
}
UNAUTHORIZED_WORDS = {
    Provider.CLAUDE_CODE: "Failed to authenticate",
    Provider.CODEX: "Please log out and sign in again",
    Provider.GEMINI_CLI: "UNAUTHENTICATED",
}
# Per provider: the model endpoint, a minimal request, and words of its real 401 body.
MODEL_ENDPOINTS: dict[Provider, tuple[str, dict[str, object], str]] = {
    Provider.CLAUDE_CODE: (
        "https://api.anthropic.com/v1/messages?beta=true",
        {"model": "claude-test", "messages": [], "stream": True},
        '"authentication_error"',
    ),
    Provider.CODEX: (
        "https://chatgpt.com/backend-api/codex/responses",
        {"model": "gpt-test", "input": [], "stream": True},
        '{"detail":"Unauthorized"}',
    ),
    Provider.GEMINI_CLI: (
        "https://cloudcode-pa.googleapis.com/v1internal:streamGenerateContent?alt=sse",
        {"model": "gemini-test", "request": {"contents": []}},
        '"UNAUTHENTICATED"',
    ),
}
# The CLIs that refresh the access token after a 401 (gemini's stream call does not retry).
REFRESHES_ON_401 = {Provider.CLAUDE_CODE: "/v1/oauth/token", Provider.CODEX: "/oauth/token"}


def outcome(vendor: VendorCli, run: CliRun) -> RunEvent:
    """The run's terminal event as Hearth's own parser of the CLI's output decides it."""
    parser = parser_for(vendor.provider)
    for line in run.stdout.decode(errors="replace").splitlines():
        parser.feed_line(line)
    return parser.finish(exit_code=run.returncode, signal=None, stderr_tail=run.stderr_tail())


@pytest.fixture(scope="session")
def vendor_modules() -> Path:
    """The pinned CLIs' node_modules, installed into the image cache first if missing."""
    cache = Path(os.environ.get("HEARTH_CACHE_DIR", "/var/cache/hearth"))
    tree = cache / "vendor"
    if shutil.which("npm") is None and not any(tree.glob("*/COMPLETE")):
        pytest.skip("needs npm to install the pinned vendor CLIs (scripts/install.sh installs it)")
    return ensure_vendor_tree(cache) / GUEST_VENDOR_DIR / "node_modules"


@pytest.fixture(params=list(VENDORS.values()), ids=[p.value for p in VENDORS])
def vendor(request: pytest.FixtureRequest) -> VendorCli:
    """One vendor CLI."""
    chosen: VendorCli = request.param
    return chosen


@pytest.fixture
def document(vendor: VendorCli) -> dict[str, object]:
    """A credential document with tokens of this test's own."""
    return sample_document(vendor.provider.value, uuid.uuid4().hex[:12])


@pytest.fixture
def home(tmp_path: Path, vendor: VendorCli, document: dict[str, object]) -> Path:
    """A HOME holding the delivered credential, as the agent writes it."""
    path = tmp_path / "home"
    vendor.deliver(path, document)
    return path


@pytest.fixture
async def rig(
    tmp_path: Path, vendor: VendorCli, vendor_modules: Path, document: dict[str, object]
) -> AsyncIterator[StandInRig]:
    """The stand-in (expecting the delivered token) behind a pinned egress proxy."""
    if vendor.provider is Provider.CODEX:
        require_tools("zstd")  # codex sends its Responses bodies zstd-compressed
    async with StandInRig(
        vendor,
        modules=vendor_modules,
        workdir=tmp_path,
        expected_token=vendor.access_token(document),
    ) as started:
        yield started


def test_each_standin_serves_exactly_the_hosts_a_logged_in_cli_may_reach() -> None:
    for provider, vendor in VENDORS.items():
        allowed = {AllowRule.parse(entry).host for entry in PROVIDER_API_HOSTS[provider]}
        assert set(vendor.standin.hosts) == allowed


@pytest.mark.parametrize("vendor", list(VENDORS.values()), ids=[p.value for p in VENDORS])
async def test_standin_answers_a_wrong_bearer_with_the_providers_401_through_the_proxy(
    vendor: VendorCli, tmp_path: Path
) -> None:
    url, body, refusal = MODEL_ENDPOINTS[vendor.provider]
    async with StandInRig(
        vendor, modules=tmp_path, workdir=tmp_path, expected_token="right-token"
    ) as rig:
        verify = ssl.create_default_context(cafile=str(rig.ca_bundle))
        async with httpx.AsyncClient(proxy=rig.proxy_url, verify=verify, timeout=10) as client:
            wrong = await client.post(url, json=body, headers={"authorization": "Bearer wrong"})
            right = await client.post(
                url, json=body, headers={"authorization": "Bearer right-token"}
            )

    assert wrong.status_code == 401
    assert refusal in wrong.text
    assert right.status_code == 200
    assert right.headers["content-type"].startswith("text/event-stream")
    assert [r.bearer for r in rig.standin.requests] == ["wrong", "right-token"]


async def test_cli_streams_the_answer_and_reports_its_usage(
    vendor: VendorCli, rig: StandInRig, home: Path, document: dict[str, object]
) -> None:
    run = await rig.run(home, PROMPT, timeout_s=RUN_TIMEOUT_S)

    assert run.returncode == 0, run.describe()
    provider = vendor.provider
    assert headless.streamed_text(provider, run.events) == rig.script.text, run.describe()
    usage = rig.script.usage
    assert (usage.input_tokens, usage.output_tokens) in headless.usages(provider, run.events)
    assert headless.session_id(provider, run.events)
    assert len(rig.standin.model_requests) == 1
    assert rig.standin.bearers() == {vendor.access_token(document)}


async def test_cli_runs_the_tool_the_model_asks_for_and_answers_after_its_result(
    vendor: VendorCli, rig: StandInRig, home: Path
) -> None:
    (home / "workspace").mkdir(parents=True, exist_ok=True)
    (home / "workspace" / "notes.md").write_text("hello\n")
    rig.script.scenario = Scenario.TOOL_CALL

    run = await rig.run(home, PROMPT, timeout_s=RUN_TIMEOUT_S)

    assert run.returncode == 0, run.describe()
    provider = vendor.provider
    assert headless.tool_calls(provider, run.events), run.describe()
    assert headless.tool_results(provider, run.events), run.describe()
    if provider is not Provider.GEMINI_CLI:  # gemini prints only the tool's status
        assert "notes.md" in headless.tool_results(provider, run.events)[0]
    assert headless.final_text(provider, run.events) == rig.script.tool_text
    assert len(rig.standin.model_requests) == 2  # the call, then the turn carrying its result


async def test_cli_reports_the_providers_rate_limit(
    vendor: VendorCli, rig: StandInRig, home: Path
) -> None:
    rig.script.scenario = Scenario.RATE_LIMITED

    run = await rig.run(home, PROMPT, timeout_s=RUN_TIMEOUT_S)

    assert run.returncode not in (0, None), run.describe()
    errors = headless.error_text(vendor.provider, run.events)
    assert RATE_LIMIT_WORDS[vendor.provider] in errors, run.describe()
    assert outcome(vendor, run).data["code"] == RunFailure.RATE_LIMITED, run.describe()
    assert len(rig.standin.model_requests) == 1  # a used-up quota is not retried


async def test_cli_reports_the_providers_401_after_its_refresh_is_refused(
    vendor: VendorCli, rig: StandInRig, home: Path
) -> None:
    rig.script.scenario = Scenario.UNAUTHORIZED

    run = await rig.run(home, PROMPT, timeout_s=RUN_TIMEOUT_S)

    assert run.returncode not in (0, None), run.describe()
    errors = headless.error_text(vendor.provider, run.events)
    assert UNAUTHORIZED_WORDS[vendor.provider] in errors, run.describe()
    assert outcome(vendor, run).data["code"] == RunFailure.NOT_LOGGED_IN, run.describe()
    refresh = REFRESHES_ON_401.get(vendor.provider)
    if refresh is not None:
        assert refresh in [r.path for r in rig.standin.requests]


async def test_cli_fails_when_the_provider_does_not_know_the_delivered_token(
    vendor: VendorCli, tmp_path: Path, vendor_modules: Path, home: Path, document: dict[str, object]
) -> None:
    async with StandInRig(
        vendor, modules=vendor_modules, workdir=tmp_path, expected_token="some-other-token"
    ) as rig:
        run = await rig.run(home, PROMPT, timeout_s=RUN_TIMEOUT_S)

    assert run.returncode not in (0, None), run.describe()
    assert rig.standin.bearers() == {vendor.access_token(document)}
    assert rig.standin.model_requests == [] or headless.error_text(vendor.provider, run.events)


async def test_cli_retries_a_cut_stream_and_completes_the_answer(
    vendor: VendorCli, rig: StandInRig, home: Path
) -> None:
    rig.script.then([Scenario.DROPPED])

    run = await rig.run(home, PROMPT, timeout_s=RUN_TIMEOUT_S)

    assert run.returncode == 0, run.describe()
    assert len(rig.standin.model_requests) == 2
    # gemini leaves the cut stream's deltas in its output and streams the retry after them
    final = headless.final_text(vendor.provider, run.events)
    assert final is not None, run.describe()
    assert final.endswith(rig.script.text), run.describe()


async def test_cli_stops_mid_stream_when_interrupted(
    vendor: VendorCli, rig: StandInRig, home: Path
) -> None:
    rig.script.chunk_delay = 1.0  # the whole answer would take ~10 s
    process = await rig.spawn(home, PROMPT)
    began = False
    while (event := await process.next_event(timeout_s=RUN_TIMEOUT_S)) is not None:
        if headless.answer_begun(vendor.provider, event):
            began = True
            break
    assert began, "the answer never began"

    process.send_signal(signal.SIGINT)
    run = await process.finish(timeout_s=15)

    assert not run.timed_out, run.describe()
    assert run.seconds < 15
    assert headless.streamed_text(vendor.provider, run.events) != rig.script.text
    assert not process.group_alive()


async def test_cli_resumes_its_session_with_the_earlier_turn(
    vendor: VendorCli, rig: StandInRig, home: Path
) -> None:
    first = await rig.run(home, PROMPT, timeout_s=RUN_TIMEOUT_S)
    session = headless.session_id(vendor.provider, first.events)
    assert first.returncode == 0, first.describe()
    assert session, first.describe()

    second = await rig.run(home, "And again", resume=session, timeout_s=RUN_TIMEOUT_S)

    assert second.returncode == 0, second.describe()
    [_, resumed] = rig.standin.model_requests
    assert rig.script.text.encode() in resumed.body, "the earlier answer was not sent again"
    assert b"And again" in resumed.body
