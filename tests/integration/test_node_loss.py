"""A node whose agent dies: it goes NotReady, its VMs fail or move, and it comes back cleanly.

The first test runs a real controller and two real agent processes and SIGKILLs one. The second
runs agents in this process so it can look into the backend of the returning agent (a sim backend
forgets its VMs with its process, where real VM processes outlive their agent).
"""

import time
from pathlib import Path
from typing import Any, TypeVar

import pytest

from helpers import (
    AgentLoop,
    AgentProcess,
    ControllerProcess,
    InProcessController,
    agent_loop,
    create_join_token,
    processes,
    wait_until,
)
from shoal.agent.agent import Agent, AgentSettings
from shoal.backends.base import Actual
from shoal.backends.sim import SimBackend, SimSettings
from shoal.client import AsyncClient, Client
from shoal.model.meta import get_condition, parse_iso

pytestmark = pytest.mark.slow
Obj = dict[str, Any]
T = TypeVar("T")


def deploy(client: Client, name: str, policy: str, selector: dict[str, str] | None = None) -> Obj:
    spec: Obj = {"image": "sim:1", "cpu": 1, "memory": "1Gi", "restartPolicy": policy}
    if selector:
        spec["nodeSelector"] = selector
    return client.create("virtualmachines", {"metadata": {"name": name}, "spec": spec}, "default")


def vm(client: Client, name: str) -> Obj:
    return client.get("virtualmachines", name, "default")


def running_on(client: Client, name: str, node: str) -> Obj | None:
    obj = vm(client, name)
    if obj["status"]["phase"] == "Running" and obj["spec"].get("nodeName") == node:
        return obj
    return None


def node_ready(client: Client, name: str, *, after: float = 0.0) -> bool:
    node = client.get("nodes", name)
    condition = get_condition(node, "Ready")
    heartbeat = node["status"].get("lastHeartbeatTime")
    return (
        condition is not None
        and condition["status"] == "True"
        and heartbeat is not None
        and parse_iso(heartbeat).timestamp() > after
    )


def node_not_ready(client: Client, name: str) -> dict[str, str] | None:
    condition = get_condition(client.get("nodes", name), "Ready")
    return condition if condition and condition["status"] == "False" else None


def events(client: Client, reason: str, involved: str) -> list[Obj]:
    return [
        e
        for e in client.list_all("events", None)
        if e["reason"] == reason and e["involvedObject"]["name"] == involved
    ]


def test_sigkilled_agent_node_is_lost_and_its_vms_fail_or_move(tmp_path: Path) -> None:
    controller = ControllerProcess(
        tmp_path / "controller", extra_args=["--node-grace", "3", "--eviction-timeout", "4"]
    )
    controller.start()
    client = controller.client()
    join = create_join_token(client)
    common = ["--heartbeat-interval", "1", "--sim-boot-delay", "0.1"]
    # Node a holds two VMs; it is at its VM limit once they run, so (nodeSelector or not) the
    # VMs deployed afterwards go to b.
    agent_a = AgentProcess(
        controller.url,
        join,
        "a",
        tmp_path / "agent-a",
        extra_args=[*common, "--label", "host=a", "--sim-vms", "2"],
    )
    agent_b = AgentProcess(
        controller.url, join, "b", tmp_path / "agent-b", extra_args=[*common, "--label", "host=b"]
    )
    with processes(controller, agent_a, agent_b):
        # While a is the only node, its VMs (no selector: OnNodeLost ones may move) land there.
        agent_a.start()
        wait_until(lambda: node_ready(client, "a"), what="node a Ready")
        deploy(client, "a-never", "Never")
        deploy(client, "a-restart", "OnNodeLost")
        for name in ("a-never", "a-restart"):
            wait_until(lambda name=name: running_on(client, name, "a"), what=f"{name} on a")
        agent_b.start()
        wait_until(lambda: node_ready(client, "b"), what="node b Ready")
        deploy(client, "b-never", "Never", {"host": "b"})
        deploy(client, "b-restart", "OnNodeLost", {"host": "b"})
        for name in ("b-never", "b-restart"):
            wait_until(lambda name=name: running_on(client, name, "b"), what=f"{name} on b")
        on_b = {name: vm(client, name) for name in ("b-never", "b-restart")}

        agent_a.kill()
        condition = wait_until(lambda: node_not_ready(client, "a"), what="node a NotReady")
        assert condition["reason"] == "NodeStatusUnknown"
        assert "(grace 3s): the agent is down or cut off" in condition["message"]
        assert events(client, "NodeNotReady", "a")

        failed = wait_until(
            lambda: (obj := vm(client, "a-never"))["status"]["phase"] == "Failed" and obj,
            what="a-never Failed",
        )
        assert failed["status"]["reason"] == "NodeLost"
        assert failed["status"]["message"].startswith("node a was lost (no heartbeat since ")
        assert failed["spec"]["nodeName"] == "a"
        moved = wait_until(lambda: running_on(client, "a-restart", "b"), what="a-restart on b")
        assert moved["status"]["restartCount"] == 1
        assert events(client, "NodeLost", "a-never")
        assert events(client, "NodeLost", "a-restart")

        # b and its VMs were not disturbed: same phase, same node, not written at all.
        assert node_ready(client, "b")
        assert not events(client, "NodeNotReady", "b")
        for name, before in on_b.items():
            after = vm(client, name)
            assert after["spec"]["nodeName"] == "b"
            assert after["status"]["phase"] == "Running"
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

        # a comes back with the same name and state dir: Ready again, and it runs nothing that
        # the controller moved or failed while it was away.
        restarted_at = time.time()
        agent_a.start()
        wait_until(lambda: node_ready(client, "a", after=restarted_at), what="node a Ready again")
        wait_until(lambda: events(client, "NodeReady", "a"), what="a NodeReady event")
        deploy(client, "a-after", "Never", {"host": "a"})
        # Its watch was up (after relisting a-never) by the time this one runs there.
        wait_until(lambda: running_on(client, "a-after", "a"), what="a-after on a")
        still_failed = vm(client, "a-never")
        assert (still_failed["status"]["phase"], still_failed["status"]["reason"]) == (
            "Failed",
            "NodeLost",
        )
        assert still_failed["metadata"]["resourceVersion"] == failed["metadata"]["resourceVersion"]
        still_moved = vm(client, "a-restart")
        assert still_moved["spec"]["nodeName"] == "b"
        assert still_moved["status"]["phase"] == "Running"
        assert still_moved["metadata"]["resourceVersion"] == moved["metadata"]["resourceVersion"]


def adopting(old: SimBackend) -> SimBackend:
    """A fresh backend that finds the VMs the old one left running, as a restarted agent finds
    the VM processes that outlived it (the sim backend keeps them in memory only)."""
    new = SimBackend(old.settings)
    new._vms, new._specs, new._next_port = old._vms, old._specs, old._next_port
    return new


def backend_state(runner: AgentLoop, backend: SimBackend) -> dict[str, Actual]:
    async def states() -> dict[str, Actual]:
        return {state.id: state.actual for state in await backend.list()}

    return runner.call(states())


def test_returning_agent_removes_moved_vms_and_keeps_failed_ones_down(tmp_path: Path) -> None:
    with (
        InProcessController(
            tmp_path,
            node_grace_seconds=2.0,
            eviction_timeout_seconds=1.0,
            housekeeping_interval=0.2,
        ) as controller,
        agent_loop() as runner,
    ):
        client = controller.client()
        sim = SimSettings(boot_delay=0.05)

        def agent(name: str, backend: SimBackend) -> Agent:
            token, _ = controller.plane.tokens.issue("Node", "", name)
            settings = AgentSettings(node_name=name, heartbeat_interval=0.2, retry_interval=0.2)
            return Agent(AsyncClient(controller.url, token), backend, settings)

        backend_n = SimBackend(sim)
        first_n = runner.start(agent("n", backend_n))
        agents = [first_n]
        try:
            wait_until(lambda: node_ready(client, "n"), what="node n Ready")
            uids = {
                name: deploy(client, name, policy)["metadata"]["uid"]
                for name, policy in (("never", "Never"), ("restart", "OnNodeLost"))
            }
            for name in uids:
                wait_until(lambda name=name: running_on(client, name, "n"), what=f"{name} on n")
            agents.append(runner.start(agent("m", SimBackend(sim))))
            wait_until(lambda: node_ready(client, "m"), what="node m Ready")

            # The agent of n dies; the VMs it ran keep running on the host.
            first_n.cancel()
            wait_until(lambda: node_not_ready(client, "n"), what="node n NotReady")
            failed = wait_until(
                lambda: (
                    vm(client, "never")["status"]["reason"] == "NodeLost" and vm(client, "never")
                ),
                what="never Failed/NodeLost",
            )
            wait_until(lambda: running_on(client, "restart", "m"), what="restart on m")
            assert backend_state(runner, backend_n) == {
                uids["never"]: Actual.RUNNING,
                uids["restart"]: Actual.RUNNING,
            }

            # It comes back and finds both still running on its host.
            backend_again = adopting(backend_n)
            restarted_at = time.time()
            agents.append(runner.start(agent("n", backend_again)))
            wait_until(lambda: node_ready(client, "n", after=restarted_at), what="n Ready again")
            wait_until(
                lambda: backend_state(runner, backend_again) == {uids["never"]: Actual.STOPPED},
                what="the moved VM removed and the failed one stopped on n",
            )
            after = vm(client, "never")
            assert (after["status"]["phase"], after["status"]["reason"]) == ("Failed", "NodeLost")
            assert after["metadata"]["resourceVersion"] == failed["metadata"]["resourceVersion"]
            assert running_on(client, "restart", "m")
        finally:
            for future in agents:
                future.cancel()
