"""``StandInRig``: a provider's stand-in behind a real egress proxy, and a vendor CLI run through.

The rig builds what a CLI VM gives a vendor CLI, on the host's loopback: a test CA (its bundle
is the only extra trust the CLI gets), the provider's stand-in serving TLS for the real host
names, and an :class:`hearth.network.egress.EgressProxy` whose allowlist is the provider's
production list (:data:`hearth.network.provider_hosts.PROVIDER_API_HOSTS`) and whose pins send
those hosts to the stand-in. The CLI gets ``HTTPS_PROXY`` and nothing else of the test's
environment, so a real API key or proxy setting of the machine cannot leak into it, and any
host it tries beyond the list is refused by the proxy.

:class:`CliProcess` runs one CLI in a process group of its own and kills that group (by its id)
when it is done, whatever the CLI left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hearth.bench.standins.ca import TestCA
from hearth.bench.standins.scenarios import Script
from hearth.bench.standins.server import StandInServer, provider_pins
from hearth.bench.standins.standin import ProviderStandIn
from hearth.bench.standins.vendors import VendorCli
from hearth.closing import Closing
from hearth.network.allowlist import AllowRule
from hearth.network.egress import EgressProxy
from hearth.network.provider_hosts import PROVIDER_API_HOSTS

_STDERR_TAIL_LINES = 30


@dataclass(frozen=True)
class CliRun:
    """How one CLI run ended: its output, exit status, and time taken."""

    argv: list[str]
    returncode: int | None  # None: it had to be killed (see ``timed_out``)
    stdout: bytes
    stderr: bytes
    seconds: float
    timed_out: bool = False

    @property
    def events(self) -> list[dict[str, object]]:
        """The stdout lines that are JSON objects, in order (headless JSON output)."""
        found = []
        for line in self.stdout.splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    found.append(value)
        return found

    def stderr_tail(self, lines: int = _STDERR_TAIL_LINES) -> str:
        """The last ``lines`` lines of stderr, for a failure message or a capture."""
        return "\n".join(self.stderr.decode(errors="replace").splitlines()[-lines:])

    def describe(self) -> str:
        """Exit status, stdout and stderr tail: what a failed assertion should show."""
        stdout = self.stdout.decode(errors="replace")[-4000:]
        head = f"exit {self.returncode} after {self.seconds:.1f}s"
        return f"{head}\n{stdout}\n--\n{self.stderr_tail()}"


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is left (zombies do not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


class CliProcess:
    """A vendor CLI started in a process group of its own; :meth:`finish` ends it."""

    def __init__(self, process: asyncio.subprocess.Process, argv: list[str]) -> None:
        self._process = process
        self.argv = argv
        self._started = time.monotonic()
        self._stdout = bytearray()

    @classmethod
    async def spawn(cls, argv: list[str], *, env: Mapping[str, str], cwd: Path) -> CliProcess:
        """Start ``argv`` with exactly ``env``, stdin closed."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(process, argv)

    @property
    def pid(self) -> int:
        """The CLI's pid, which is also its process group's id."""
        return self._process.pid

    async def next_event(self, *, timeout_s: float) -> dict[str, object] | None:
        """The next stdout line that is a JSON object; None at the end of stdout."""
        assert self._process.stdout is not None
        async with asyncio.timeout(timeout_s):
            while line := await self._process.stdout.readline():
                self._stdout += line
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        return value
        return None

    def send_signal(self, signum: int) -> None:
        """Signal the CLI's whole process group (what a user's Ctrl-C does)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    async def finish(self, *, timeout_s: float) -> CliRun:
        """Wait for the CLI to exit (killing its group once ``timeout_s`` passes), then kill
        whatever it left in its group, and report."""
        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                rest, stderr = await self._process.communicate()
        except TimeoutError:
            timed_out = True
            self.send_signal(signal.SIGKILL)
            rest, stderr = await self._process.communicate()
        self.send_signal(signal.SIGKILL)
        return CliRun(
            argv=self.argv,
            returncode=None if timed_out else self._process.returncode,
            stdout=bytes(self._stdout) + rest,
            stderr=stderr,
            seconds=time.monotonic() - self._started,
            timed_out=timed_out,
        )

    def group_alive(self) -> bool:
        """Whether a process of the CLI's group is still running."""
        return _group_alive(self.pid)


class StandInRig(Closing):
    """A test CA, a vendor's stand-in served over TLS, and the egress proxy in front of it."""

    def __init__(
        self,
        vendor: VendorCli,
        *,
        modules: Path,
        workdir: Path,
        expected_token: str,
        script: Script | None = None,
    ) -> None:
        self.vendor = vendor
        self.modules = modules
        self._workdir = workdir
        self.standin: ProviderStandIn = vendor.standin(expected_token=expected_token, script=script)
        self._server: StandInServer | None = None
        self._proxy: EgressProxy | None = None
        self.ca_bundle = workdir / "ca-bundle.pem"

    @property
    def script(self) -> Script:
        """The stand-in's script; change it between runs."""
        return self.standin.script

    async def start(self) -> None:
        """Issue the certificates, start the stand-in, then the proxy pinned to it."""
        allow = PROVIDER_API_HOSTS[self.vendor.provider]
        hosts = [AllowRule.parse(entry).host for entry in allow]
        if set(hosts) != set(self.standin.hosts):
            raise ValueError(f"the stand-in serves {self.standin.hosts}, the allowlist {hosts}")
        ca = TestCA()
        ca.write_bundle(self.ca_bundle)
        leaf = ca.issue(self.standin.hosts, self._workdir / "tls", stem="standin")
        server = self._server = StandInServer(self.standin.app(), leaf=leaf)
        try:
            await server.start()
            pins = provider_pins(self.vendor.provider, server.address)
            owner = f"standin-{self.vendor.provider.value}"
            self._proxy = EgressProxy(allow, owner=owner, pins=pins)
            await self._proxy.start()
        except BaseException:
            await self.close()  # ``async with`` does not close what failed to start
            raise

    async def close(self) -> None:
        """Stop the stand-in, then the proxy; safe to call twice. In this order the tunnels a
        CLI kept open end as their upstream closes, and the proxy has none left to cancel
        (Python 3.11's asyncio logs each cancelled connection handler as an error)."""
        proxy, self._proxy = self._proxy, None
        server, self._server = self._server, None
        try:
            if server is not None:
                await server.close()
        finally:
            if proxy is not None:
                await proxy.close()

    @property
    def proxy_url(self) -> str:
        """``http://127.0.0.1:<port>``: what the CLI gets as ``HTTPS_PROXY``."""
        if self._proxy is None:
            raise RuntimeError("the rig is not started")
        return f"http://127.0.0.1:{self._proxy.port}"

    def environment(self, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The CLI's whole environment: HOME, PATH, locale, proxy, CA, quieting, ``extra``."""
        tmp = home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {
            "HOME": str(home),
            "PATH": f"{self.modules / '.bin'}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),  # gemini writes error reports there
            "HTTPS_PROXY": self.proxy_url,
            "HTTP_PROXY": self.proxy_url,
            **self.vendor.environment(ca_bundle=self.ca_bundle),
            **(extra or {}),
        }

    async def spawn(
        self,
        home: Path,
        prompt: str,
        *,
        resume: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> CliProcess:
        """Start the vendor CLI on ``prompt`` with HOME ``home`` (in ``home/workspace``)."""
        workspace = cwd if cwd is not None else home / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        argv = self.vendor.command(self.modules, prompt, resume=resume)
        return await CliProcess.spawn(argv, env=self.environment(home, env), cwd=workspace)

    async def run(
        self,
        home: Path,
        prompt: str,
        *,
        resume: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 90.0,
    ) -> CliRun:
        """Run the vendor CLI on ``prompt`` to its end (see :meth:`spawn`)."""
        process = await self.spawn(home, prompt, resume=resume, env=env)
        return await process.finish(timeout_s=timeout_s)
