"""Capture what each real vendor CLI prints headless against its stand-in, one file per case.

``.venv/bin/python -m tests.standins.capture [PROVIDER ...]`` writes, for every case below,
``tests/data/runs/<provider>-<case>.jsonl`` (the CLI's stdout, byte for byte but for the
sanitizing) and ``<provider>-<case>.meta.json`` (argv, the environment the run added, exit code,
time, the tail of stderr, and what the stand-in saw). Sanitizing replaces the delivered tokens
with ``<access-token>``-style markers and the run's temporary paths with the ones a CLI VM has
(``/root``, ``/opt/hearth/vendor/node_modules``), so the files are stable and carry no secret.
The parsers of Hearth's run events are tested against these files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hearth.bench.standins.documents import sample_document
from hearth.bench.standins.scenarios import Scenario, Script
from hearth.bench.standins.vendors import VENDORS, VendorCli
from hearth.images.vendor import GUEST_VENDOR_DIR, ensure_vendor_tree, pinned_versions
from hearth_agent.wire import Provider
from tests.standins.headless import answer_begun, session_id
from tests.standins.rig import CliRun, StandInRig

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "runs"
PROMPT = "Say hello"
GUEST_HOME = "/root"
GUEST_MODULES = f"/{GUEST_VENDOR_DIR}/node_modules"
CANCEL_CHUNK_DELAY_S = 1.0  # slow enough that the signal lands mid-stream


@dataclass(frozen=True)
class Case:
    """One capture: the scenarios the stand-in plays, in order, and how the run is driven."""

    name: str
    scenarios: tuple[Scenario, ...]
    description: str
    env: Mapping[Provider, Mapping[str, str]] = field(default_factory=dict)
    cancel: bool = False  # SIGINT to the CLI's group once the answer is streaming
    resume: bool = False  # a first run answers; the captured run resumes its session


CASES = (
    Case("answer", (Scenario.ANSWER,), "a streamed text answer with usage"),
    Case(
        "tool_call",
        (Scenario.TOOL_CALL,),
        "the model calls a read-only tool (claude: Bash ls; codex: exec -> exec_command ls; "
        "gemini: list_directory), then answers after its result",
    ),
    Case("rate_limited", (Scenario.RATE_LIMITED,), "every model request gets the provider's 429"),
    Case(
        "unauthorized",
        (Scenario.UNAUTHORIZED,),
        "every model request gets the provider's 401; the CLI's token refresh is refused",
    ),
    Case(
        "dropped",
        (Scenario.DROPPED,),
        "every answer stream is cut mid-way, retries included, until the CLI gives up",
        # claude retries a cut stream 10 times with backoff up to 32 s: two are enough to show
        env={Provider.CLAUDE_CODE: {"CLAUDE_CODE_MAX_RETRIES": "2"}},
    ),
    Case(
        "dropped_then_answer",
        (Scenario.DROPPED, Scenario.ANSWER),
        "the first answer stream is cut mid-way; the CLI's retry gets the whole answer",
    ),
    Case(
        "cancelled",
        (Scenario.ANSWER,),
        f"a slow answer ({CANCEL_CHUNK_DELAY_S} s between events) interrupted by SIGINT to the "
        "CLI's process group once it has begun",
        cancel=True,
    ),
    Case(
        "resumed",
        (Scenario.ANSWER, Scenario.ANSWER),
        "the second of two runs, resuming the first one's session by its id",
        resume=True,
    ),
)


class Sanitizer:
    """Replaces secrets and machine-specific paths in captured text."""

    def __init__(self, replacements: Mapping[str, str]) -> None:
        # Longest first, so a path is replaced before a prefix of it.
        self._pairs = sorted(
            ((k, v) for k, v in replacements.items() if k), key=lambda p: -len(p[0])
        )

    def text(self, value: str) -> str:
        """``value`` with every replacement made."""
        for old, new in self._pairs:
            value = value.replace(old, new)
        return value

    def bytes(self, value: bytes) -> bytes:
        """The same for bytes (UTF-8)."""
        return self.text(value.decode(errors="replace")).encode()


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9]", "-", str(path))


def _secrets(document: Mapping[str, object]) -> dict[str, str]:
    """Every token of a credential document, mapped to a marker naming its field."""
    found: dict[str, str] = {}

    def walk(node: object, name: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, str(key))
        elif isinstance(node, str) and "token" in name.lower():
            found[node] = f"<{name.lower().replace('_', '-')}>"

    walk(document, "")
    return found


async def capture(vendor: VendorCli, case: Case, *, modules: Path, out: Path) -> Path:
    """Run ``case`` for ``vendor`` and write its files; returns the ``.jsonl`` path."""
    document = sample_document(vendor.provider.value, "capture")
    with tempfile.TemporaryDirectory(prefix="standin-capture-") as scratch:
        root = Path(scratch)
        home = root / "home"
        vendor.deliver(home, document)
        script = Script(scenario=case.scenarios[-1]).then(case.scenarios[:-1])
        if case.cancel:
            script.chunk_delay = CANCEL_CHUNK_DELAY_S
        extra = dict(case.env.get(vendor.provider, {}))
        async with StandInRig(
            vendor,
            modules=modules,
            workdir=root,
            expected_token=vendor.access_token(document),
            script=script,
        ) as rig:
            resume = None
            if case.resume:
                first = await rig.run(home, PROMPT, env=extra)
                resume = session_id(vendor.provider, first.events)
            run = await _drive(rig, home, case, resume=resume, env=extra)
            seen = [r.describe() for r in rig.standin.requests]
            model_requests = len(rig.standin.model_requests)
            bearers = rig.standin.bearers()
        sanitizer = Sanitizer(
            {
                **_secrets(document),
                str(home): GUEST_HOME,
                # claude names a project's directory after its path, every non-alphanumeric
                # character a dash
                _slug(home / "workspace"): _slug(Path(GUEST_HOME) / "workspace"),
                str(modules): GUEST_MODULES,
                str(root): "/tmp/standin",
            }
        )
        return _write(
            vendor,
            case,
            run,
            sanitizer,
            out=out,
            extra_env=extra,
            seen=seen,
            model_requests=model_requests,
            bearer_ok=bearers == {vendor.access_token(document)},
            ca_bundle=str(rig.ca_bundle),
        )


async def _drive(
    rig: StandInRig, home: Path, case: Case, *, resume: str | None, env: Mapping[str, str]
) -> CliRun:
    if not case.cancel:
        return await rig.run(home, PROMPT, resume=resume, env=env)
    process = await rig.spawn(home, PROMPT, env=env)
    while (event := await process.next_event(timeout_s=60)) is not None:
        if answer_begun(rig.vendor.provider, event):
            await asyncio.sleep(CANCEL_CHUNK_DELAY_S / 2)
            process.send_signal(signal.SIGINT)
            break
    return await process.finish(timeout_s=30)


def _write(
    vendor: VendorCli,
    case: Case,
    run: CliRun,
    sanitizer: Sanitizer,
    *,
    out: Path,
    extra_env: Mapping[str, str],
    seen: Sequence[str],
    model_requests: int,
    bearer_ok: bool,
    ca_bundle: str,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{vendor.provider.value}-{case.name}"
    jsonl = out / f"{stem}.jsonl"
    jsonl.write_bytes(sanitizer.bytes(run.stdout))
    added_env = {**vendor.environment(ca_bundle=Path(ca_bundle)), **extra_env}
    meta = {
        "provider": vendor.provider.value,
        "case": case.name,
        "description": case.description,
        "scenarios": [s.value for s in case.scenarios],
        "cli_versions": pinned_versions(),
        "argv": [sanitizer.text(a) for a in run.argv],
        "env_added": {k: sanitizer.text(v) for k, v in sorted(added_env.items())},
        "proxy": "HTTPS_PROXY and HTTP_PROXY: a hearth EgressProxy on 127.0.0.1",
        "exit_code": run.returncode,
        "timed_out": run.timed_out,
        "signal_sent": "SIGINT" if case.cancel else None,
        "seconds": round(run.seconds, 1),
        "stderr_tail": sanitizer.text(run.stderr_tail()),
        "standin": {
            "requests": [sanitizer.text(r) for r in seen],
            "model_requests": model_requests,
            "bearer_was_the_delivered_access_token": bearer_ok,
        },
    }
    (out / f"{stem}.meta.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return jsonl


async def main(providers: Sequence[Provider], cases: Sequence[str], out: Path) -> None:
    """Capture every case of ``cases`` for every provider of ``providers``."""
    cache = Path(os.environ.get("HEARTH_CACHE_DIR", "/var/cache/hearth"))
    modules = ensure_vendor_tree(cache) / GUEST_VENDOR_DIR / "node_modules"
    for provider in providers:
        for case in CASES:
            if cases and case.name not in cases:
                continue
            path = await capture(VENDORS[provider], case, modules=modules, out=out)
            print(path.relative_to(REPO) if path.is_relative_to(REPO) else path, flush=True)


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("providers", nargs="*", default=[p.value for p in VENDORS])
    parser.add_argument("--case", action="append", default=[], help="only these cases")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    asyncio.run(main([Provider(p) for p in args.providers], args.case, args.out))


if __name__ == "__main__":
    _cli()
