"""The node-lifecycle loop against a real Store on SQLite, with the clock passed in."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from builders import build_node, build_vm
from shoal.agent.reconcile import lost_with_node
from shoal.controllers.gc import GarbageCollector
from shoal.controllers.nodelifecycle import NodeLifecycle, iso
from shoal.errors import NotFound
from shoal.model.kinds import AGENT_FINALIZER
from shoal.model.meta import get_condition
from shoal.store.store import Store

Obj = dict[str, Any]
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
GRACE, EVICTION = 40.0, 300.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'shoal.db'}")
    yield store
    store.close()


def loop(store: Store) -> NodeLifecycle:
    """The loop of a controller that has been watching since T0."""
    lifecycle = NodeLifecycle(store, grace=GRACE, eviction_timeout=EVICTION)
    lifecycle.run_once(T0)
    return lifecycle


def add_node(store: Store, name: str, heartbeat: datetime) -> Obj:
    node = build_node(name)
    node["status"]["lastHeartbeatTime"] = iso(heartbeat)
    node["status"]["conditions"][0]["lastTransitionTime"] = iso(heartbeat)
    return store.create(node)


def heartbeat(store: Store, name: str, at: datetime) -> Obj:
    """What the agent's heartbeat PATCH leaves: Ready=True and a fresh lastHeartbeatTime."""

    def change(node: Obj) -> Obj:
        node["status"]["conditions"] = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AgentReady",
                "message": "",
                "lastTransitionTime": iso(at),
            }
        ]
        node["status"]["lastHeartbeatTime"] = iso(at)
        return node

    return store.mutate("Node", "", name, change)


def add_vm(
    store: Store,
    name: str,
    node: str,
    *,
    policy: str = "Never",
    deleting: bool = False,
    phase: str = "Running",
    reason: str = "",
) -> Obj:
    vm = build_vm(name, nodeName=node, restartPolicy=policy)
    vm["metadata"]["finalizers"] = [AGENT_FINALIZER]
    if deleting:
        vm["metadata"]["deletionTimestamp"] = iso(T0)
    vm["status"].update(
        phase=phase,
        reason=reason,
        addresses=["10.0.2.15"],
        bootTime=iso(T0),
        conditions=[
            {"type": "Scheduled", "status": "True", "reason": "Scheduled", "message": ""},
            {"type": "Ready", "status": "True", "reason": "GuestReachable", "message": ""},
        ],
    )
    return store.create(vm)


def get_vm(store: Store, name: str) -> Obj:
    return store.get("VirtualMachine", "default", name)


def rv(obj: Obj) -> str:
    return str(obj["metadata"]["resourceVersion"])


def events_of(store: Store, reason: str) -> list[Obj]:
    return [e for e in store.list_objects("Event")[0] if e["reason"] == reason]


def ready(obj: Obj) -> dict[str, str]:
    condition = get_condition(obj, "Ready")
    assert condition is not None
    return condition


# -- Ready -> NotReady ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("silent", "expected", "message"),
    [
        (0, "True", ""),
        (10, "True", ""),
        (40, "True", ""),  # exactly the grace: still fresh
        (42, "False", "no heartbeat for 42s (grace 40s): the agent is down or cut off"),
        (3600, "False", "no heartbeat for 3600s (grace 40s): the agent is down or cut off"),
    ],
)
def test_ready_after_heartbeat_silence(
    store: Store, silent: int, expected: str, message: str
) -> None:
    before = add_node(store, "n1", T0)
    lifecycle = loop(store)
    now = T0 + timedelta(seconds=silent)

    lifecycle.run_once(now)
    after = store.get("Node", "", "n1")
    assert ready(after)["status"] == expected
    if expected == "True":
        assert rv(after) == rv(before)
        assert events_of(store, "NodeNotReady") == []
        return
    assert ready(after)["reason"] == "NodeStatusUnknown"
    assert ready(after)["message"] == message
    assert ready(after)["lastTransitionTime"] == iso(now)
    assert after["status"]["lastHeartbeatTime"] == iso(T0)  # the agent's report is kept
    [event] = events_of(store, "NodeNotReady")
    assert (event["type"], event["message"], event["count"]) == ("Warning", message, 1)

    # Level-triggered and idempotent: later rounds write nothing and report nothing new.
    lifecycle.run_once(now + timedelta(seconds=5))
    assert rv(store.get("Node", "", "n1")) == rv(after)
    assert events_of(store, "NodeNotReady")[0]["count"] == 1


def test_heartbeat_racing_the_not_ready_write_is_not_clobbered(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_node(store, "n1", T0)
    now = T0 + timedelta(seconds=60)
    lifecycle = loop(store)
    real_list = store.list_objects

    def list_then_heartbeat(kind: str, *args: Any, **kwargs: Any) -> tuple[list[Obj], int]:
        listed = real_list(kind, *args, **kwargs)
        if kind == "Node":  # the agent heartbeats right after the loop read the stale node
            heartbeat(store, "n1", now)
        return listed

    monkeypatch.setattr(store, "list_objects", list_then_heartbeat)
    lifecycle.run_once(now)

    node = store.get("Node", "", "n1")
    assert ready(node)["status"] == "True"
    assert node["status"]["lastHeartbeatTime"] == iso(now)
    assert events_of(store, "NodeNotReady") == []


def test_a_controller_back_from_downtime_gives_agents_a_grace_first(store: Store) -> None:
    # Agents cannot heartbeat while the controller is down: coming back after ten minutes, it
    # must not find every node lost, only those still silent a grace after it started looking.
    before = add_node(store, "n1", T0)
    lifecycle = NodeLifecycle(store, grace=GRACE, eviction_timeout=EVICTION)
    back = T0 + timedelta(minutes=10)
    lifecycle.run_once(back)
    lifecycle.run_once(back + timedelta(seconds=GRACE))
    assert rv(store.get("Node", "", "n1")) == rv(before)
    lifecycle.run_once(back + timedelta(seconds=GRACE + 1))
    condition = ready(store.get("Node", "", "n1"))
    assert (condition["status"], condition["message"]) == (
        "False",
        "no heartbeat for 641s (grace 40s): the agent is down or cut off",
    )


def test_node_back_to_ready_is_reported_once(store: Store) -> None:
    add_node(store, "n1", T0)
    lifecycle = loop(store)
    lifecycle.run_once(T0 + timedelta(seconds=50))
    assert ready(store.get("Node", "", "n1"))["status"] == "False"

    heartbeat(store, "n1", T0 + timedelta(seconds=55))
    lifecycle.run_once(T0 + timedelta(seconds=56))
    lifecycle.run_once(T0 + timedelta(seconds=57))
    assert ready(store.get("Node", "", "n1"))["status"] == "True"
    [event] = events_of(store, "NodeReady")
    assert (event["type"], event["count"]) == ("Normal", 1)


# -- eviction ------------------------------------------------------------------------------


def lost_node_with(store: Store, *vms: dict[str, Any]) -> tuple[NodeLifecycle, datetime]:
    """Node n1 gone NotReady at T0+50 with the given VMs bound, and the loop that saw it."""
    add_node(store, "n1", T0)
    add_node(store, "n2", T0)
    for vm in vms:
        add_vm(store, **vm)
    lifecycle = loop(store)
    went_not_ready = T0 + timedelta(seconds=50)
    heartbeat(store, "n2", went_not_ready)
    lifecycle.run_once(went_not_ready)
    assert ready(store.get("Node", "", "n1"))["status"] == "False"
    return lifecycle, went_not_ready


@pytest.mark.parametrize("after", [0, 1, 150, 299])
def test_no_eviction_before_the_timeout(store: Store, after: int) -> None:
    lifecycle, went = lost_node_with(
        store,
        {"name": "never", "node": "n1"},
        {"name": "restart", "node": "n1", "policy": "OnNodeLost"},
        {"name": "deleting", "node": "n1", "deleting": True},
    )
    before = {name: rv(get_vm(store, name)) for name in ("never", "restart", "deleting")}
    heartbeat(store, "n2", went + timedelta(seconds=after))
    lifecycle.run_once(went + timedelta(seconds=after))
    assert {name: rv(get_vm(store, name)) for name in before} == before
    assert events_of(store, "NodeLost") == []


MESSAGE = f"node n1 was lost (no heartbeat since {iso(T0)})"


@pytest.mark.parametrize(
    ("vm", "expected"),
    [
        (
            {"name": "never", "node": "n1"},
            {
                "phase": "Failed",
                "reason": "NodeLost",
                "message": MESSAGE,
                "nodeName": "n1",
                "finalizers": [AGENT_FINALIZER],
                "restartCount": 0,
                "Ready": "False",
            },
        ),
        (
            {"name": "restart", "node": "n1", "policy": "OnNodeLost"},
            {
                "phase": "Pending",
                "reason": "",
                "message": "rescheduling: node n1 was lost",
                "nodeName": None,
                "finalizers": [],
                "restartCount": 1,
                "Ready": "False",
                "Scheduled": ("False", "NodeLost"),
            },
        ),
        (
            {"name": "stopped", "node": "n1", "phase": "Stopped"},
            {"phase": "Failed", "reason": "NodeLost", "nodeName": "n1"},
        ),
        ({"name": "deleting", "node": "n1", "deleting": True}, None),  # gone
        (
            {"name": "deleting-restart", "node": "n1", "policy": "OnNodeLost", "deleting": True},
            None,
        ),
    ],
    ids=["never", "on-node-lost", "stopped", "deleting", "deleting-on-node-lost"],
)
def test_eviction_by_restart_policy(store: Store, vm: Obj, expected: Obj | None) -> None:
    lifecycle, went = lost_node_with(store, vm)
    now = went + timedelta(seconds=EVICTION)
    lifecycle.run_once(now)

    if expected is None:
        with pytest.raises(NotFound):
            get_vm(store, vm["name"])
        [event] = events_of(store, "NodeLost")
        assert "released the agent's finalizer" in event["message"]
        return
    after = get_vm(store, vm["name"])
    status = after["status"]
    for key in ("phase", "reason", "message", "restartCount"):
        if key in expected:
            assert status[key] == expected[key], key
    assert after["spec"].get("nodeName") == expected["nodeName"]
    if "finalizers" in expected:
        assert after["metadata"]["finalizers"] == expected["finalizers"]
    if "Ready" in expected:
        assert ready(after)["status"] == expected["Ready"]
    if "Scheduled" in expected:
        scheduled = get_condition(after, "Scheduled")
        assert scheduled is not None
        assert (scheduled["status"], scheduled["reason"]) == expected["Scheduled"]
    [event] = events_of(store, "NodeLost")
    assert (event["type"], event["involvedObject"]["name"]) == ("Warning", vm["name"])
    assert MESSAGE in event["message"]

    # Idempotent: a second round (and a later one) changes nothing.
    lifecycle.run_once(now + timedelta(seconds=1))
    lifecycle.run_once(now + timedelta(seconds=100))
    assert rv(get_vm(store, vm["name"])) == rv(after)
    assert events_of(store, "NodeLost")[0]["count"] == 1


def test_eviction_leaves_other_nodes_and_failed_vms_alone(store: Store) -> None:
    lifecycle, went = lost_node_with(
        store,
        {"name": "lost-already", "node": "n1", "phase": "Failed", "reason": "NodeLost"},
        {"name": "elsewhere", "node": "n2"},
        {"name": "elsewhere-restart", "node": "n2", "policy": "OnNodeLost"},
    )
    before = {
        name: rv(get_vm(store, name)) for name in ("lost-already", "elsewhere", "elsewhere-restart")
    }
    now = went + timedelta(seconds=EVICTION + 1)
    heartbeat(store, "n2", now)
    lifecycle.run_once(now)
    assert {name: rv(get_vm(store, name)) for name in before} == before
    assert events_of(store, "NodeLost") == []


def test_node_back_between_listing_and_eviction_keeps_its_vms(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    lifecycle, went = lost_node_with(store, {"name": "never", "node": "n1"})
    before = rv(get_vm(store, "never"))
    now = went + timedelta(seconds=EVICTION + 1)
    real_list = store.list_objects

    def list_then_heartbeat(kind: str, *args: Any, **kwargs: Any) -> tuple[list[Obj], int]:
        listed = real_list(kind, *args, **kwargs)
        if kind == "VirtualMachine":  # the agent comes back while the loop holds its VMs
            heartbeat(store, "n1", now)
        return listed

    monkeypatch.setattr(store, "list_objects", list_then_heartbeat)
    lifecycle.run_once(now)
    assert rv(get_vm(store, "never")) == before
    assert get_vm(store, "never")["status"]["phase"] == "Running"


def test_evicted_ephemeral_failed_vm_is_collected(store: Store) -> None:
    lifecycle, went = lost_node_with(store, {"name": "never", "node": "n1"})
    store.mutate(
        "VirtualMachine",
        "default",
        "never",
        lambda vm: vm["spec"].update(ephemeral=True) or vm,
    )
    lifecycle.run_once(went + timedelta(seconds=EVICTION))
    assert get_vm(store, "never")["status"]["reason"] == "NodeLost"

    gc = GarbageCollector(store)
    gc.run_once()  # marks it deleted: the agent's finalizer holds it, its node is still there
    assert get_vm(store, "never")["metadata"]["deletionTimestamp"]
    lifecycle.run_once(went + timedelta(seconds=EVICTION + 2))  # the loop releases it
    with pytest.raises(NotFound):
        get_vm(store, "never")


@pytest.mark.parametrize(
    ("phase", "reason", "deleting", "lost"),
    [
        ("Failed", "NodeLost", False, True),
        ("Failed", "NodeLost", True, False),  # being deleted: the agent deletes it as usual
        ("Failed", "BackendError", False, False),
        ("Running", "", False, False),
        ("Pending", "", False, False),
    ],
)
def test_agent_leaves_vms_failed_by_node_loss_alone(
    phase: str, reason: str, deleting: bool, lost: bool
) -> None:
    vm = build_vm("vm", nodeName="n1")
    vm["status"].update(phase=phase, reason=reason)
    if deleting:
        vm["metadata"]["deletionTimestamp"] = iso(T0)
    assert lost_with_node(vm) is lost
