"""300 deploys fired at once at 10 simulated nodes with room for 100 VMs in all.

The controller and the agents are real processes; the check that no node is ever over capacity
is made from the watch stream, event by event.
"""

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import AgentProcess, ControllerProcess, create_join_token, processes, wait_until
from shoal.client import resource_path

NODES, PER_NODE, DEPLOYS = 10, 10, 300


class CapacityWatcher(threading.Thread):
    """Follows every VM event and remembers the most VMs any node ever held at once."""

    def __init__(self, controller: ControllerProcess, since: str) -> None:
        super().__init__(daemon=True)
        self.client = controller.client()
        self.since = since
        self.bound: dict[str, str] = {}
        self.peak: Counter[str] = Counter()
        self.vms: dict[str, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for event in self.client.watch(
                "virtualmachines", "default", resource_version=self.since, timeout=300
            ):
                if self.stop.is_set():
                    return
                if event["type"] == "BOOKMARK":
                    continue
                vm = event["object"]
                uid = vm["metadata"]["uid"]
                if event["type"] == "DELETED":
                    self.bound.pop(uid, None)
                    self.vms.pop(uid, None)
                else:
                    self.vms[uid] = vm
                    if vm["spec"].get("nodeName"):
                        self.bound[uid] = vm["spec"]["nodeName"]
                for node, count in Counter(self.bound.values()).items():
                    self.peak[node] = max(self.peak[node], count)
        except BaseException as error:  # surfaced by the test
            self.error = error

    def phases(self) -> Counter[str]:
        """Phases, with Pending counted only once the scheduler has said why the VM waits."""
        counted: Counter[str] = Counter()
        for vm in list(self.vms.values()):
            phase = vm["status"]["phase"]
            conditions = {c["type"]: c["status"] for c in vm["status"].get("conditions", [])}
            if phase == "Pending" and conditions.get("Scheduled") != "False":
                phase = "Pending (not yet looked at)"
            counted[phase] += 1
        return counted


async def _deploy_all(url: str, token: str, ca_pem: str) -> list[int]:
    import ssl

    context = ssl.create_default_context(cadata=ca_pem)
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(
        base_url=url,
        verify=context,
        limits=limits,
        timeout=120,
        headers={"Authorization": f"Bearer {token}"},
    ) as http:

        async def one(i: int) -> int:
            body = {
                "metadata": {"name": f"burst-{i:03d}"},
                "spec": {"image": "sim:1", "cpu": 1, "memory": "1Gi"},
            }
            response = await http.post(resource_path("virtualmachines", "default"), json=body)
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(DEPLOYS))))


@pytest.mark.slow
def test_burst_of_deploys_never_overcommits(tmp_path: Path) -> None:
    controller = ControllerProcess(tmp_path / "controller")
    controller.start()
    with processes(controller):
        client = controller.client()
        agent = AgentProcess(
            controller.url,
            create_join_token(client),
            "sim",
            tmp_path / "agent",
            replicas=NODES,
            extra_args=[
                "--sim-vms",
                str(PER_NODE),
                "--sim-cpu",
                "64",
                "--sim-memory",
                "256Gi",
                "--sim-boot-delay",
                "0.2",
                "--heartbeat-interval",
                "2",
            ],
        )
        agent.start()
        with processes(agent):
            wait_until(lambda: len(client.list("nodes")["items"]) == NODES, what="10 nodes joined")
            since = client.list("virtualmachines", "default")["metadata"]["resourceVersion"]
            watcher = CapacityWatcher(controller, since)
            watcher.start()

            codes = asyncio.run(
                _deploy_all(controller.url, controller.admin_token, controller.ca_pem)
            )
            assert Counter(codes) == {201: DEPLOYS}

            def settled() -> bool:
                phases = watcher.phases()
                return (
                    phases["Running"] == NODES * PER_NODE
                    and phases["Pending"] == DEPLOYS - NODES * PER_NODE
                )

            wait_until(settled, timeout=180, what="100 Running and 200 Pending")
            pending = [
                vm
                for vm in client.list_all("virtualmachines", "default")
                if vm["status"]["phase"] == "Pending"
            ]
            assert len(pending) == DEPLOYS - NODES * PER_NODE
            for vm in pending:
                scheduled = next(c for c in vm["status"]["conditions"] if c["type"] == "Scheduled")
                assert scheduled["status"] == "False"
                assert (
                    scheduled["message"] == f"0/{NODES} nodes available: {NODES} at their VM limit"
                )
                assert vm["status"]["message"] == scheduled["message"]

            running = sorted(
                vm["metadata"]["name"]
                for vm in client.list_all("virtualmachines", "default")
                if vm["status"]["phase"] == "Running"
            )
            for name in running[:20]:
                client.delete("virtualmachines", name, "default")

            def refilled() -> bool:
                phases = watcher.phases()
                return (
                    phases["Running"] == NODES * PER_NODE
                    and phases["Pending"] == DEPLOYS - NODES * PER_NODE - 20
                )

            wait_until(refilled, timeout=180, what="20 Pending VMs to start in the freed room")
            watcher.stop.set()
            assert watcher.error is None, watcher.error
            assert len(watcher.peak) == NODES
            assert max(watcher.peak.values()) == PER_NODE
            for node in client.list("nodes")["items"]:
                name = node["metadata"]["name"]
                bound = client.list("virtualmachines", fieldSelector=f"spec.nodeName={name}")[
                    "items"
                ]
                assert len(bound) <= PER_NODE
