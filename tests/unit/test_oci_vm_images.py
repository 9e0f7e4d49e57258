"""The pure parts of running VMs from OCI images: the pull's progress message, what a VM takes
from its Image and the image config, default Image names, registry hosts, the reference forms
the Node lists; and the agent reporting a long create's progress and its failure reason."""

import asyncio
import copy
from typing import Any

import pytest

from shoal.agent import agent as agent_module
from shoal.agent.agent import Agent, AgentSettings, _reference_keys
from shoal.backends.base import Actual, BackendError, Capacity, VMState
from shoal.backends.qemu.images import human_bytes, merged_settings, pull_message
from shoal.cli.common import CliError
from shoal.cli.image import default_name
from shoal.cli.registry import registry_host
from shoal.images.layout import Metadata
from shoal.images.reference import parse

REF = "reg.example:5000/team/x:1"


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(int(2.1 * 2**30)) == "2.1 GiB"
    assert human_bytes(3 * 2**50) == "3072.0 TiB"


def test_pull_message() -> None:
    total = int(2.1 * 2**30)
    assert pull_message(REF, total * 45 // 100 + 1, total) == f"pulling {REF}: 45% of 2.1 GiB"
    assert pull_message(REF, total, total) == f"pulling {REF}: 100% of 2.1 GiB"
    assert pull_message(REF, 0, 0) == f"pulling {REF}"


def test_an_images_fields_win_and_the_config_fills_the_rest() -> None:
    config = Metadata(boot="kernel", cmdline="console=ttyS0", sshUser="builder", memory="2Gi")
    image = {"source": {"oci": REF}, "os": "linux", "sshUser": "ci", "cpu": None, "disk": "20Gi"}
    assert merged_settings(image, config) == {
        "os": "linux",
        "boot": "kernel",
        "firmware": "bios",
        "cmdline": "console=ttyS0",
        "sshUser": "ci",
        "memory": "2Gi",
        "disk": "20Gi",
    }
    # A VM naming the reference directly: everything comes from the config.
    direct = merged_settings({"source": {"oci": REF}}, config)
    assert direct["sshUser"] == "builder" and "cpu" not in direct


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("reg.example:5000/team/ubuntu:24.04", "ubuntu-24-04"),
        ("reg.example/guest", "guest"),
        ("reg.example/guest:latest", "guest"),
        ("reg.example/a/b__c:V_1", "b-c-v-1"),
        (f"reg.example/x@sha256:{'a' * 64}", "x"),
        ("reg.example/" + "a" * 80 + ":1", "a" * 63),
    ],
)
def test_default_image_name(reference: str, name: str) -> None:
    assert default_name(parse(reference)) == name


def test_registry_host() -> None:
    assert registry_host("reg.example:5000") == "reg.example:5000"
    assert registry_host("https://Reg.Example/v2/") == "reg.example"
    assert registry_host("localhost") == "localhost"
    for bad in ("", "just-a-name", "reg.example:99999", "bad host"):
        with pytest.raises(CliError, match="is not a registry HOST"):
            registry_host(bad)


def test_reference_keys() -> None:
    digest = "sha256:" + "b" * 64
    assert _reference_keys("reg.example/x") == {"reg.example/x:latest"}
    assert _reference_keys(f"reg.example/x:1@{digest}") == {
        f"reg.example/x:1@{digest}",
        f"reg.example/x@{digest}",
    }
    assert _reference_keys("Not A Reference") == set()


# -- the agent: a long create -------------------------------------------------------------------


class PullingBackend:
    """create() 'pulls' until released; meanwhile status() says how far it got."""

    name = "fake"
    resolves_images = True

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.state = VMState("u1", Actual.ABSENT)
        self.release = asyncio.Event()
        self.specs: list[dict[str, Any]] = []

    def subscribe(self, callback: Any) -> None:
        pass

    async def capacity(self) -> Capacity:
        return Capacity(1, 2**30, 2**30, 1)

    async def create(self, vm_id: str, spec: dict[str, Any]) -> None:
        self.specs.append(spec)
        self.state = VMState(vm_id, Actual.STARTING, message=f"pulling {REF}: 45% of 2.1 GiB")
        await self.release.wait()
        if self.fail:
            message = f"pulling {REF} failed: there is no image team/x:1 on reg.example:5000"
            self.state = VMState(vm_id, Actual.FAILED, reason="ImagePullFailed", message=message)
            raise BackendError(message)
        self.state = VMState(vm_id, Actual.STOPPED)

    async def start(self, vm_id: str) -> None:
        self.state = VMState(vm_id, Actual.STARTING)

    async def status(self, vm_id: str) -> VMState:
        return self.state


class RecordingClient:
    def __init__(self, vm: dict[str, Any]) -> None:
        self.vm = vm
        self.statuses: list[dict[str, Any]] = []

    async def patch(
        self, plural: str, name: str, body: Any, namespace: str | None = None, sub: str = ""
    ) -> dict[str, Any]:
        self.statuses.append(body["status"])
        meta = self.vm["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        self.vm["status"] = body["status"]
        return copy.deepcopy(self.vm)

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        return {}


@pytest.mark.parametrize("fail", [False, True])
def test_the_agent_reports_a_long_creates_progress_and_the_backends_reason(
    fail: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "CREATE_PROGRESS_INTERVAL", 0.01)
    vm = {
        "apiVersion": "shoal.dev/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": "x",
            "namespace": "default",
            "uid": "u1",
            "resourceVersion": "1",
            "generation": 1,
        },
        "spec": {"image": REF, "powerState": "Running"},
        "status": {"phase": "Scheduled"},
    }
    backend = PullingBackend(fail)
    client = RecordingClient(copy.deepcopy(vm))
    agent = Agent(client, backend, AgentSettings(node_name="n1"))  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.create_task(agent.reconcile(copy.deepcopy(vm)))
        for _ in range(500):
            if any(s.get("message", "").startswith(f"pulling {REF}: 45%") for s in client.statuses):
                break
            await asyncio.sleep(0.01)
        backend.release.set()
        await task

    asyncio.run(scenario())
    assert backend.specs[0]["resolvedImage"] == {"source": {"oci": REF}}
    progress = [s for s in client.statuses if s["message"].startswith(f"pulling {REF}: ")]
    assert progress and all(s["phase"] == "Starting" for s in progress)
    final = client.statuses[-1]
    if fail:
        assert (final["phase"], final["reason"]) == ("Failed", "ImagePullFailed")
        assert "there is no image team/x:1" in final["message"]
    else:
        assert (final["phase"], final["message"]) == ("Starting", "")
