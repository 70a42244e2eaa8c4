"""``AgentBackend``: the fake VM backend whose every VM runs a real agent process on loopback.

What the auth flow needs of a VM is its agent: the Browser VM's runs the login, the CLI VM's
takes the delivered credentials. Each VM is a ``FakeBackend`` record plus one
``python -m hearth_agent`` subprocess, started by the integration suite's ``AgentLauncher`` on
127.0.0.1 with a home of its own; destroying or killing the VM kills that process by PID and
reaps it. The launcher's owner closes it, which kills every agent ever started and proves that
none is left.

The agent starts holding the VM's token (a token file, as a claimed agent that restarts does)
rather than being claimed through ``hearth.vm.claim.claim_vm``: on the host it must run with
``--no-reseed`` (a reseed would credit entropy to, and rekey, the host kernel's CRNG), and such an
agent answers ``reseeded: false``, which ``claim_vm`` rightly refuses; the claim's ``time`` would
also set the host's clock. The claim is tested in ``tests/integration/test_vm_claim.py`` and, in
real VMs, under ``tests/vm``.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from dataclasses import dataclass

import pytest

from hearth.errors import VmError
from hearth.images.manifest import ImageDir
from hearth.vm.types import BootMode, Vm, VmSpec, VmState, VmType
from tests.fake_backend import FakeBackend
from tests.integration.conftest import AgentLauncher, AgentProcess

# What the home of an agent with ``unwritable_home`` is: a regular file where its credential
# directories must go. Running as root, permissions would not stop a write; ENOTDIR does.
_NOT_A_DIRECTORY = "a regular file where the agent's home directory should be\n"


@dataclass
class AgentFaults:
    """How the agents of the next VMs of one type misbehave; all off is a healthy agent."""

    # The agent exits before it listens (its token file is missing): the VM's boot fails.
    exit_at_boot: bool = False
    # The agent's home is a regular file: it serves, but every credential write fails.
    unwritable_home: bool = False


class AgentBackend(FakeBackend):
    """A ``FakeBackend`` whose VMs each run a real agent on loopback, reachable at ``agent_url``.

    ``faults[vm_type]`` breaks the agents of VMs created from then on; ``hold``, ``fail_next``
    and ``kill`` work as in ``FakeBackend`` (``kill`` also kills the VM's agent by PID).
    """

    def __init__(self, launcher: AgentLauncher) -> None:
        super().__init__()
        self.launcher = launcher
        self.agents: dict[str, AgentProcess] = {}
        self.faults: dict[VmType, AgentFaults] = {vm_type: AgentFaults() for vm_type in VmType}

    async def create(
        self,
        image: ImageDir,
        spec: VmSpec,
        *,
        vm_id: str | None = None,
        boot_mode: BootMode | None = None,
        claim: bool = True,
    ) -> Vm:
        """A ready VM whose agent answers /health; claimed (its token set) unless ``claim`` is
        False. VmError, with the VM destroyed, when its agent does not come up."""
        vm = await super().create(image, spec, vm_id=vm_id, boot_mode=boot_mode, claim=False)
        try:
            await self._start_agent(vm)
        except BaseException as exc:
            vm.error = str(exc) or type(exc).__name__
            vm.move_to(VmState.FAILED)
            self.created.remove(vm.id)
            await self.destroy(vm)
            raise
        if claim:
            vm.token = self.agents[vm.id].token
        return vm

    async def claim(self, vm: Vm) -> str:
        """Hand out the token the VM's agent holds (see the module docstring)."""
        if vm.token is not None:
            raise VmError(f"VM {vm.id} is already claimed")
        if not self.alive(vm):
            raise VmError(f"VM {vm.id} is not running")
        token = self.agents[vm.id].token
        assert token is not None
        vm.token = token
        return token

    async def pause(self, vm: Vm) -> None:
        """As the fake's; the VM's agent is stopped (SIGSTOP), as a paused guest's would be:
        it takes connections (the kernel queues them) but answers nothing."""
        await super().pause(vm)
        self._signal_agent(vm.id, signal.SIGSTOP)

    async def resume(self, vm: Vm) -> None:
        """As the fake's; the VM's agent goes on (SIGCONT)."""
        await super().resume(vm)
        self._signal_agent(vm.id, signal.SIGCONT)

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        """As the fake's; the VM's agent is stopped (SIGSTOP) while the VM is "saved"."""
        await super().hibernate(vm, state_key)
        self._signal_agent(vm.id, signal.SIGSTOP)

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """As the fake's; the VM's agent (stopped while it was "saved", as the processes of a
        real hibernated VM come back with its memory) goes on and answers at its address."""
        woken = await super().wake(vm, state_key)
        agent = self.agents[vm.id]
        self._signal_agent(vm.id, signal.SIGCONT)
        woken.agent_url, woken.pid = agent.base_url, agent.pid
        return woken

    def kill(self, vm_id: str) -> None:
        """End a VM as a dying VMM would: its agent killed and reaped, the VM no longer alive."""
        self._stop_agent(vm_id)
        super().kill(vm_id)

    async def destroy(self, vm: Vm) -> None:
        """Kill the VM's agent (if it has one) and forget the VM; idempotent."""
        self._stop_agent(vm.id)
        await super().destroy(vm)

    def agent(self, vm_id: str) -> AgentProcess:
        """The agent process of VM ``vm_id`` (running or not)."""
        return self.agents[vm_id]

    def running_agents(self) -> set[str]:
        """The ids of the VMs whose agent process is still running."""
        return {vm_id for vm_id, agent in self.agents.items() if agent.process.poll() is None}

    def leftovers(self) -> list[str]:
        """The fake's leftovers, and every agent process still running."""
        return super().leftovers() + [
            f"agent process {self.agents[vm_id].pid} of VM {vm_id} is still running"
            for vm_id in sorted(self.running_agents())
        ]

    async def _start_agent(self, vm: Vm) -> None:
        faults = self.faults[vm.spec.vm_type]
        root = self.launcher.root / vm.id
        root.mkdir(mode=0o700, parents=True)
        token_file = root / "secrets" / "token"
        token = secrets.token_urlsafe(32)
        if not faults.exit_at_boot:
            token_file.parent.mkdir(mode=0o700)
            token_file.write_text(token + "\n", encoding="utf-8")
            token_file.chmod(0o600)
        home = root / "home"
        if faults.unwritable_home:
            home.write_text(_NOT_A_DIRECTORY, encoding="utf-8")
        agent = self.launcher.spawn(
            "--listen",
            "127.0.0.1:0",
            "--home",
            str(home),
            "--token-file",
            str(token_file),
            "--no-reseed",
            default_args=False,
        )
        self.agents[vm.id] = agent
        try:
            # The launcher waits with blocking sleeps: in a thread, the event loop runs on.
            await asyncio.to_thread(agent.wait_until_healthy)
        except pytest.fail.Exception:
            code = agent.process.poll()
            state = "is not healthy" if code is None else f"exited with code {code}"
            raise VmError(f"VM {vm.id}: its agent {state} before it listened") from None
        agent.token = token
        vm.agent_url = agent.base_url
        vm.pid = agent.pid

    def _signal_agent(self, vm_id: str, signum: signal.Signals) -> None:
        agent = self.agents.get(vm_id)
        if agent is not None and agent.process.poll() is None:
            agent.process.send_signal(signum)

    def _stop_agent(self, vm_id: str) -> None:
        agent = self.agents.get(vm_id)
        if agent is not None:
            agent.kill()
