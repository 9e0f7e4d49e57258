"""The controller killed with SIGKILL and started again loses nothing; agents and watches resume."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    AgentProcess,
    ControllerProcess,
    InProcessController,
    create_join_token,
    processes,
    wait_until,
)
from shoal.client import Client
from shoal.errors import Gone, Unavailable
from shoal.model.meta import parse_iso


class ResumingWatcher(threading.Thread):
    """A client that watches VMs, and resumes from its last resourceVersion when the stream breaks."""

    def __init__(self, client: Client, since: str) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.rv = since
        self.seen: list[dict[str, Any]] = []
        self.breaks = 0
        self.relists = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for event in self.client.watch(
                    "virtualmachines", "default", resource_version=self.rv, timeout=60
                ):
                    self.rv = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.seen.append(event)
                    if self.stop.is_set():
                        return
            except Unavailable:
                self.breaks += 1
                time.sleep(0.2)
            except Gone:
                self.relists += 1
                self.rv = self.client.list("virtualmachines", "default")["metadata"][
                    "resourceVersion"
                ]

    def names(self, event_type: str) -> set[str]:
        return {e["object"]["metadata"]["name"] for e in self.seen if e["type"] == event_type}


def _running(client: Client, name: str) -> bool:
    return client.get("virtualmachines", name, "default")["status"]["phase"] == "Running"


@pytest.mark.slow
def test_sigkill_controller_loses_nothing_and_everyone_resumes(tmp_path: Path) -> None:
    controller = ControllerProcess(tmp_path / "controller")
    controller.start()
    with processes(controller):
        client = controller.client()
        agent = AgentProcess(
            controller.url,
            create_join_token(client),
            "node",
            tmp_path / "agent",
            replicas=2,
            extra_args=["--heartbeat-interval", "1", "--sim-boot-delay", "0.1"],
        )
        agent.start()
        with processes(agent):
            wait_until(lambda: len(client.list("nodes")["items"]) == 2, what="2 nodes")
            for i in range(6):
                client.create(
                    "virtualmachines",
                    {"metadata": {"name": f"before-{i}"}, "spec": {"image": "sim:1", "cpu": 1}},
                    "default",
                )
            for i in range(6):
                wait_until(lambda i=i: _running(client, f"before-{i}"), what=f"before-{i} Running")
            before = {
                kind: {o["metadata"]["name"]: o for o in client.list_all(kind, None)}
                for kind in ("virtualmachines", "nodes", "namespaces", "events")
            }
            watcher = ResumingWatcher(
                controller.client(),
                client.list("virtualmachines", "default")["metadata"]["resourceVersion"],
            )
            watcher.start()

            controller.kill()
            killed_at = time.time()
            controller.start()
            client = controller.client()

            after_vms = {o["metadata"]["name"]: o for o in client.list_all("virtualmachines", None)}
            assert set(after_vms) == set(before["virtualmachines"])
            for name, vm in before["virtualmachines"].items():
                assert after_vms[name]["metadata"]["uid"] == vm["metadata"]["uid"]
                assert int(after_vms[name]["metadata"]["resourceVersion"]) >= int(
                    vm["metadata"]["resourceVersion"]
                )
            assert {o["metadata"]["name"] for o in client.list_all("namespaces")} == set(
                before["namespaces"]
            )
            assert set(before["events"]) <= {
                o["metadata"]["name"] for o in client.list_all("events", None)
            }

            def heartbeats_resumed() -> bool:
                nodes = client.list("nodes")["items"]
                return len(nodes) == 2 and all(
                    parse_iso(n["status"]["lastHeartbeatTime"]).timestamp() > killed_at
                    for n in nodes
                )

            wait_until(heartbeats_resumed, what="both agents heartbeating again")
            client.create(
                "virtualmachines",
                {"metadata": {"name": "after"}, "spec": {"image": "sim:1", "cpu": 1}},
                "default",
            )
            wait_until(
                lambda: _running(client, "after"), what="a VM deployed after the restart to run"
            )
            wait_until(
                lambda: "after" in watcher.names("ADDED"),
                what="the resumed watch to see the new VM",
            )
            watcher.stop.set()
            assert watcher.breaks >= 1
            assert watcher.relists == 0  # resumed from its resourceVersion, nothing to relist


def test_watch_from_compacted_version_is_gone_and_relist_works(tmp_path: Path) -> None:
    with InProcessController(tmp_path, change_retention=5) as controller:
        client = controller.client()
        first = client.create(
            "vmconfigs", {"metadata": {"name": "c0"}, "spec": {"image": "x:1"}}, "default"
        )
        for i in range(1, 12):
            client.create(
                "vmconfigs", {"metadata": {"name": f"c{i}"}, "spec": {"image": "x:1"}}, "default"
            )
        controller.plane.store.compact()
        with pytest.raises(Gone):
            next(
                iter(
                    client.watch(
                        "vmconfigs",
                        "default",
                        resource_version=first["metadata"]["resourceVersion"],
                    )
                )
            )
        listing = client.list("vmconfigs", "default")
        assert len(listing["items"]) == 12
        stream = client.watch(
            "vmconfigs",
            "default",
            resource_version=listing["metadata"]["resourceVersion"],
            timeout=5,
        )
        client.create(
            "vmconfigs", {"metadata": {"name": "late"}, "spec": {"image": "x:1"}}, "default"
        )
        event = next(e for e in stream if e["type"] != "BOOKMARK")
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "late")
