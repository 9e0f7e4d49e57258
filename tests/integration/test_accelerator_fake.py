"""A node whose accelerator stops working, end to end on a real controller and an agent whose
qemu backend runs tests/fakes/qemu-accel (a healthy KVM host cannot be had here; the fake plays
one, then one whose KVM breaks). The node says so in a condition and an Event, the scheduler passes
it over with a reason a person can act on, the accelerator is never swapped, and all of it clears
once guests start again."""

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.qemu_host import FAKE_QEMU, HEALTHY_KVM, FakeHost
from helpers import InProcessController
from shoal.agent.agent import Agent, AgentSettings
from shoal.backends.qemu import QemuBackend, QemuSettings, accel
from shoal.backends.qemu import backend as qemu_backend
from shoal.client import AsyncClient, Client
from shoal.errors import NotFound
from shoal.model.meta import get_condition

pytestmark = pytest.mark.timeout(180)
BROKEN_KVM = {"fail": "failed to initialize kvm: No such file or directory"}


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    monkeypatch.setattr(qemu_backend, "ACCEL_RECHECK_SECONDS", 0.2)
    yield FakeHost(tmp_path, monkeypatch)
    accel.forget()


def node_events(client: Client) -> list[tuple[str, str, str]]:
    events = client.list("events", "default")["items"]
    return [
        (e["reason"], e["type"], e["message"])
        for e in events
        if e["involvedObject"] == {"kind": "Node", "name": "n1", "uid": e["involvedObject"]["uid"]}
    ]


async def until(check: Any, what: str, timeout: float = 60.0) -> Any:
    for _ in range(int(timeout / 0.1)):
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_fake_kvm_that_breaks_is_reported_and_avoided_then_recovers(
    host: FakeHost, tmp_path: Path
) -> None:
    host.be(kvm=HEALTHY_KVM)
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(2**20))
    with InProcessController(tmp_path / "controller") as controller:
        client = controller.client()
        client.create(
            "images",
            {
                "metadata": {"name": "blank"},
                "spec": {
                    "source": {
                        "local": {
                            "disk": {"path": str(disk), "digest": "sha256:" + "0" * 64, "size": 1}
                        }
                    },
                    "boot": "disk",
                },
            },
        )
        vm = {"spec": {"image": "blank", "cpu": 1, "memory": "64Mi", "disk": "1Gi"}}

        def node() -> dict[str, Any]:
            return client.get("nodes", "n1")

        def works(status: str) -> Any:
            def check() -> Any:
                with contextlib.suppress(NotFound):
                    condition = get_condition(node(), "AcceleratorWorks")
                    return condition if condition and condition["status"] == status else None
                return None

            return check

        def phase(name: str) -> str:
            return str(
                (client.get("virtualmachines", name, "default").get("status") or {}).get("phase")
            )

        async def scenario() -> None:
            backend = QemuBackend(
                QemuSettings(state_dir=tmp_path / "node", qemu=str(FAKE_QEMU), cpu=2, memory=2**32)
            )
            api = AsyncClient(controller.url, controller.admin_token)
            agent = Agent(
                api, backend, AgentSettings(node_name="n1", heartbeat_interval=0.2, tunnels=False)
            )
            running = asyncio.create_task(agent.run())
            try:
                chosen = await until(works("True"), "the node's first report")
                status = node()["status"]
                assert status["accelerator"] == "kvm"
                assert "faster than under emulation" in status["acceleratorReason"]
                assert chosen["reason"] == "AcceleratorChosen"
                assert chosen["message"] == status["acceleratorReason"]

                host.be(kvm=BROKEN_KVM)  # /dev/kvm goes away under the running agent
                client.create("virtualmachines", {"metadata": {"name": "a"}, **vm}, "default")
                await until(lambda: phase("a") == "Failed", "VM a to fail")
                failed = client.get("virtualmachines", "a", "default")["status"]
                assert failed["reason"] == "QemuFailed"
                assert "failed to initialize kvm: No such file or directory" in failed["message"]
                broken = await until(works("False"), "the node to report its accelerator")
                assert broken["reason"] == "AcceleratorFailed"
                assert broken["message"] == (
                    "guests no longer start under kvm: QEMU exited 1: qemu-system-x86_64: "
                    "failed to initialize kvm: No such file or directory"
                )
                assert node()["status"]["accelerator"] == "kvm"  # reported, never swapped
                await until(
                    lambda: (
                        ("AcceleratorFailed", "Warning", broken["message"]) in node_events(client)
                    ),
                    "the node's AcceleratorFailed event",
                )

                client.create("virtualmachines", {"metadata": {"name": "b"}, **vm}, "default")

                def waiting() -> Any:
                    status = client.get("virtualmachines", "b", "default").get("status") or {}
                    scheduled = next(
                        (c for c in status.get("conditions") or [] if c["type"] == "Scheduled"),
                        None,
                    )
                    return scheduled and scheduled["status"] == "False" and scheduled

                scheduled = await until(waiting, "VM b to wait")
                assert scheduled["message"] == "0/1 nodes available: 1 accelerator failing"
                assert phase("b") == "Pending"

                host.be(kvm=HEALTHY_KVM)  # fixed
                await until(works("True"), "the node to recover")
                await until(
                    lambda: (
                        ("AcceleratorWorks", "Normal", "guests start under kvm again")
                        in node_events(client)
                    ),
                    "the recovery event",
                )
                # This fake boots no VM, so b fails too, but guests do start under kvm again:
                # a VM failure alone never marks the node.
                await until(lambda: phase("b") == "Failed", "VM b to be placed, then fail")
                assert (
                    "this fake QEMU boots no VM"
                    in (client.get("virtualmachines", "b", "default")["status"]["message"])
                )
                await asyncio.sleep(1.0)  # heartbeats, and the health check b's failure started
                assert await asyncio.to_thread(works("True"))
            finally:
                running.cancel()  # the fake QEMU ran no VM: nothing outlives the test's tmp dir
                with contextlib.suppress(asyncio.CancelledError):
                    await running
                others = asyncio.all_tasks() - {asyncio.current_task()}
                await asyncio.gather(*others, return_exceptions=True)  # a health check under way
                await api.aclose()

        asyncio.run(scenario())
