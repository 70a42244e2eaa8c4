"""Contract: every request our Firecracker code sends exists in the v1.16.1 spec and validates.

The real ``FirecrackerClient`` and the real sequences run against ``httpx.MockTransport``, which
records each request and answers with the spec's success status. Each recorded request is then
checked: method + path exist in the spec (templated paths matched), path ids equal body ids, and
the JSON body validates against the operation's body schema — with ``additionalProperties:
false`` added to every object definition, so a misspelled or invented field fails.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from structlog.testing import capture_logs

from hearth.errors import BackendError
from hearth.vm.firecracker import payloads, sequences
from hearth.vm.firecracker.client import FirecrackerClient
from hearth.vm.firecracker.network import FirecrackerNetwork
from hearth.vm.firecracker.process import VmRoot
from hearth.vm.firecracker.templates import FcTemplate
from hearth.vm.types import GuestForward

SPEC_PATH = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "specs" / "firecracker-api-v1.16.1.yaml"
)
TOKEN = "tok_" + "S" * 40


@dataclass(frozen=True)
class Recorded:
    """One request the client sent."""

    method: str
    path: str
    body: Any


class Contract:
    """The spec's operations and schemas, strict about unknown fields."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.definitions = copy.deepcopy(document["definitions"])
        for definition in self.definitions.values():
            if definition.get("type") == "object" and "additionalProperties" not in definition:
                definition["additionalProperties"] = False
        self.routes: list[tuple[re.Pattern[str], str]] = [
            (re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"), path)
            for path in document["paths"]
        ]

    def operation(self, method: str, path: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The spec path template, path parameters and operation for a concrete request."""
        for pattern, template in self.routes:
            match = pattern.match(path)
            if match:
                operations = self.document["paths"][template]
                assert method.lower() in operations, f"{method} {template} is not in the spec"
                return template, match.groupdict(), operations[method.lower()]
        raise AssertionError(f"{path} is not a path of the spec")

    def validator(self, schema: dict[str, Any]) -> jsonschema.Draft4Validator:
        """A draft-4 validator for ``schema`` resolving ``#/definitions/...`` in the spec."""
        return jsonschema.Draft4Validator({**schema, "definitions": self.definitions})

    def check_request(self, request: Recorded) -> None:
        """Assert that ``request`` is one the spec allows."""
        template, params, operation = self.operation(request.method, request.path)
        body_params = [p for p in operation.get("parameters", []) if p["in"] == "body"]
        if not body_params:
            assert request.body is None, f"{request.method} {template} takes no body"
            return
        body_param = body_params[0]
        if request.body is None:
            assert not body_param.get("required"), f"{request.method} {template} needs a body"
            return
        self.validator(body_param["schema"]).validate(request.body)
        for name, value in params.items():
            assert request.body.get(name) == value, f"path {name} differs from the body's"

    def success_status(self, method: str, path: str) -> int:
        """The 2xx status the spec gives for the operation."""
        _, _, operation = self.operation(method, path)
        return min(int(code) for code in operation["responses"] if str(code).startswith("2"))

    def check_response(self, method: str, path: str, body: Any) -> None:
        """Assert that a fake answer matches the spec's response schema, so the fake can't drift."""
        _, _, operation = self.operation(method, path)
        schema = operation["responses"][200]["schema"]
        self.validator(schema).validate(body)


# What the fake answers to GETs: shapes taken from the spec's definitions.
ANSWERS: dict[str, Any] = {
    "/": {"app_name": "Firecracker", "id": "vm-1", "state": "Running", "vmm_version": "1.16.1"},
    "/version": {"firecracker_version": "1.16.1"},
    "/vm/config": {
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "smt": False},
        "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
        "drives": [
            {
                "drive_id": "rootfs",
                "path_on_host": "rootfs",
                "is_root_device": True,
                "is_read_only": False,
            }
        ],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]},
        "entropy": {},
    },
}


class FakeFirecracker:
    """A MockTransport handler that records requests and answers as the spec says."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.requests: list[Recorded] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append(Recorded(request.method, request.url.path, body))
        status = self.contract.success_status(request.method, request.url.path)
        if status == 200:
            answer = ANSWERS[request.url.path]
            self.contract.check_response(request.method, request.url.path, answer)
            return httpx.Response(200, json=answer)
        return httpx.Response(status)

    def calls(self) -> list[str]:
        """``METHOD /path`` of each request, in order."""
        return [f"{r.method} {r.path}" for r in self.requests]


@pytest.fixture(scope="module")
def contract() -> Contract:
    """The published Firecracker API spec, strict."""
    if not SPEC_PATH.exists():
        pytest.skip(f"needs the Firecracker API spec at {SPEC_PATH.resolve()}")
    return Contract(yaml.safe_load(SPEC_PATH.read_text()))


@pytest.fixture
def fake(contract: Contract) -> FakeFirecracker:
    """A fresh recording fake."""
    return FakeFirecracker(contract)


@pytest.fixture
async def client(fake: FakeFirecracker) -> Any:
    """The real client on the fake's transport."""
    async with FirecrackerClient(transport=httpx.MockTransport(fake)) as client:
        yield client


def boot_plan(**overrides: Any) -> sequences.BootPlan:
    """A cold-boot plan like the backend's."""
    values: dict[str, Any] = {
        "vcpus": 2,
        "mem_mib": 512,
        "kernel": "vmlinux",
        "boot_args": payloads.boot_args(guest_cidr="10.0.2.15/24", gateway="10.0.2.2"),
        "root_drive": "rootfs",
        "tap": "tap0",
        "guest_mac": "06:00:ac:10:00:02",
        "mmds": payloads.mmds_document(vm_id="vm-1", agent_port=8080, token=TOKEN),
        "log_path": "firecracker.log",
        "metrics_path": "metrics.json",
    }
    return sequences.BootPlan(**{**values, **overrides})


def restore_plan() -> sequences.RestorePlan:
    """A clone's restore plan like the backend's."""
    return sequences.RestorePlan(
        files=sequences.SnapshotFiles(vmstate="snapshot.vmstate", memory="snapshot.mem"),
        tap="tap7",
        mmds=payloads.mmds_document(vm_id="vm-2", agent_port=8080, token=TOKEN),
        clock_realtime=True,
        log_path="firecracker.log",
        metrics_path="metrics.json",
    )


def check_all(contract: Contract, fake: FakeFirecracker) -> int:
    """Validate every recorded request; return how many there were."""
    for request in fake.requests:
        contract.check_request(request)
    return len(fake.requests)


def test_the_strict_schemas_reject_a_misspelled_field(contract: Contract) -> None:
    bad = Recorded("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "smtt": False})
    with pytest.raises(jsonschema.ValidationError, match="smtt"):
        contract.check_request(bad)


async def test_cold_boot_sends_valid_requests_config_first_then_instance_start(
    contract: Contract, fake: FakeFirecracker, client: FirecrackerClient
) -> None:
    await sequences.configure_and_boot(client, boot_plan())
    assert check_all(contract, fake) == 10
    calls = fake.calls()
    assert calls[-1] == "PUT /actions"
    assert fake.requests[-1].body == {"action_type": "InstanceStart"}
    start = calls.index("PUT /actions")
    for needed in (
        "PUT /machine-config",
        "PUT /boot-source",
        "PUT /drives/rootfs",
        "PUT /network-interfaces/eth0",
        "PUT /mmds/config",
        "PUT /mmds",
        "PUT /entropy",
    ):
        assert calls.index(needed) < start, needed
    assert calls.index("PUT /network-interfaces/eth0") < calls.index("PUT /mmds/config")
    assert calls[:2] == ["PUT /logger", "PUT /metrics"]


async def test_cold_boot_without_observability_or_initrd_still_validates(
    contract: Contract, fake: FakeFirecracker, client: FirecrackerClient
) -> None:
    await sequences.configure_and_boot(
        client, boot_plan(log_path=None, metrics_path=None, initrd="initrd")
    )
    assert check_all(contract, fake) == 8
    boot_source = next(r for r in fake.requests if r.path == "/boot-source")
    assert boot_source.body["initrd_path"] == "initrd"


async def test_template_snapshot_pauses_before_snapshot_create_and_records_its_origin(
    contract: Contract, fake: FakeFirecracker, client: FirecrackerClient
) -> None:
    await sequences.configure_and_boot(client, boot_plan())
    booted = len(fake.requests)
    meta = await sequences.snapshot(
        client, sequences.SnapshotFiles(vmstate="vmstate", memory="memory")
    )
    assert check_all(contract, fake) == booted + 4
    assert fake.calls()[booted:] == [
        "PATCH /vm",
        "PUT /snapshot/create",
        "GET /version",
        "GET /vm/config",
    ]
    assert fake.requests[booted].body == {"state": "Paused"}
    assert fake.requests[booted + 1].body == {
        "snapshot_type": "Full",
        "snapshot_path": "vmstate",
        "mem_file_path": "memory",
    }
    assert meta["firecracker_version"] == "1.16.1"
    assert meta["vm_config"]["machine-config"]["vcpu_count"] == 2


async def test_restore_loads_with_the_clones_tap_then_mmds_then_resumes(
    contract: Contract, fake: FakeFirecracker, client: FirecrackerClient
) -> None:
    await sequences.restore(client, restore_plan())
    assert check_all(contract, fake) == 5
    assert fake.calls() == [
        "PUT /logger",
        "PUT /metrics",
        "PUT /snapshot/load",
        "PUT /mmds",
        "PATCH /vm",
    ]
    load = fake.requests[2].body
    assert load["network_overrides"] == [{"iface_id": "eth0", "host_dev_name": "tap7"}]
    assert load["mem_backend"] == {"backend_type": "File", "backend_path": "snapshot.mem"}
    assert load["resume_vm"] is False
    assert load["clock_realtime"] is True
    assert fake.requests[3].body == {
        "hearth": {"vm_id": "vm-2", "agent_port": 8080, "token": TOKEN}
    }
    assert fake.requests[4].body == {"state": "Resumed"}


async def test_pause_and_resume_each_send_one_valid_patch(
    contract: Contract, fake: FakeFirecracker, client: FirecrackerClient
) -> None:
    await sequences.pause(client)
    await sequences.resume(client)
    assert check_all(contract, fake) == 2
    assert [r.body for r in fake.requests] == [{"state": "Paused"}, {"state": "Resumed"}]


@pytest.mark.parametrize(("flush_metrics", "expected"), [(True, 2), (False, 1)])
async def test_destroy_halts_the_vm_with_valid_requests(
    contract: Contract,
    fake: FakeFirecracker,
    client: FirecrackerClient,
    flush_metrics: bool,
    expected: int,
) -> None:
    assert await sequences.halt(client, flush_metrics=flush_metrics) == []
    assert check_all(contract, fake) == expected
    assert fake.requests[-1].body == {"state": "Paused"}
    if flush_metrics:
        assert fake.requests[0].body == {"action_type": "FlushMetrics"}


async def test_instance_state_reads_the_describe_instance_answer(
    contract: Contract, fake: FakeFirecracker, client: FirecrackerClient
) -> None:
    assert await sequences.instance_state(client) == "Running"
    assert check_all(contract, fake) == 1


async def test_a_fault_message_becomes_a_backend_error_naming_the_request() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"fault_message": "Invalid kernel path"})

    async with FirecrackerClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(BackendError) as caught:
            await client.boot_source.put(
                payloads.boot_source(kernel_image_path="nope", boot_args="console=ttyS0")
            )
    assert "Invalid kernel path" in caught.value.message
    assert caught.value.message.startswith("firecracker PUT /boot-source:")


async def test_an_error_without_fault_message_quotes_the_status() -> None:
    async with FirecrackerClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(500, text="boom"))
    ) as client:
        with pytest.raises(BackendError, match=r"GET /version: HTTP 500 boom"):
            await client.version.get()


async def test_a_transport_error_becomes_a_backend_error_from_it() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no such socket", request=request)

    async with FirecrackerClient(transport=httpx.MockTransport(unreachable)) as client:
        with pytest.raises(BackendError, match="PATCH /vm: ConnectError") as caught:
            await sequences.pause(client)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_halt_reports_failures_of_a_dead_vmm_instead_of_raising() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with FirecrackerClient(transport=httpx.MockTransport(unreachable)) as client:
        failures = await sequences.halt(client, flush_metrics=True)
    assert len(failures) == 2


async def test_an_mmds_fault_never_echoes_the_token() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"fault_message": f"bad document: {request.content!r}"})

    async with FirecrackerClient(transport=httpx.MockTransport(echo)) as client:
        with pytest.raises(BackendError) as caught:
            await client.mmds.put(payloads.mmds_document(vm_id="vm-1", agent_port=1, token=TOKEN))
    assert TOKEN not in caught.value.message
    assert "[redacted]" in caught.value.message


async def test_the_backend_plans_validate_and_never_log_the_token(
    contract: Contract, fake: FakeFirecracker, tmp_path: Path
) -> None:
    """The backend's own plan building (paths, boot args, MMDS) against the spec."""
    from hearth.images.manifest import ImageDir
    from hearth.vm.accel import Accel
    from hearth.vm.firecracker.backend import FirecrackerBackend
    from hearth.vm.types import NetworkMode, Vm, VmSpec

    # The binary check only needs an executable file: no process is started here.
    binary = tmp_path / "firecracker"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    backend = FirecrackerBackend(
        state_dir=tmp_path / "state",
        networks=_NoNetworks(),
        firecracker=str(binary),
        accel=Accel("kvm", "test"),
    )
    image = ImageDir(tmp_path / "image")
    image.path.mkdir()
    for path in (image.vmlinux, image.rootfs, image.initramfs):
        path.write_bytes(b"\0" * 512)
    template = FcTemplate("k", tmp_path / "template")
    template.directory.mkdir()
    for path in (template.vmstate, template.memory, template.disk):
        path.write_bytes(b"\0")
    network = FirecrackerNetwork(netns="hearth-1", agent_host="169.254.0.6")
    vm = Vm(id="vm-1", spec=VmSpec(network=NetworkMode.NETNS), backend="firecracker")
    root = VmRoot(tmp_path / "root")
    root.path.mkdir()
    with capture_logs() as logs:
        async with FirecrackerClient(transport=httpx.MockTransport(fake)) as client:
            await backend._configure(client, vm, root, image, network, template=None, token=TOKEN)
            await backend._configure(
                client, vm, root, image, network, template=template, token=TOKEN
            )
    assert check_all(contract, fake) == 9 + 4
    boot_source = next(r.body for r in fake.requests if r.path == "/boot-source")
    assert boot_source["kernel_image_path"] == "vmlinux"
    # The guest's side of hearth.network's inner link, which hearth-init also defaults to.
    assert "hearth.ip=10.0.2.15/24 hearth.gw=10.0.2.2" in boot_source["boot_args"]
    assert (root.path / "vmlinux").resolve() == image.vmlinux.resolve()
    assert (root.path / "snapshot.mem").resolve() == template.memory.resolve()
    assert TOKEN not in repr(logs)


class _NoNetworks:
    """A NetworkProvider that must not be used by the test that holds it."""

    async def acquire(
        self, vm_id: str, *, allow_egress: bool, forwards: tuple[GuestForward, ...] = ()
    ) -> FirecrackerNetwork:
        raise AssertionError("not used")

    async def release(self, network: FirecrackerNetwork) -> None:
        raise AssertionError("not used")
