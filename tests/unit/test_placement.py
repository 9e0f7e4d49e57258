"""Pure placement: does a VM fit a node, why not, and the message a person reads."""

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.api.objects import dump
from shoal.model.kinds import VirtualMachine
from shoal.scheduler.loop import Scheduler
from shoal.scheduler.placement import (
    Allocatable,
    Request,
    node_ready,
    unschedulable_message,
    why_not,
)
from shoal.store.store import Store, Usage
from shoal.store.watch import WatchHub

Obj = dict[str, Any]
Maker = Callable[..., Obj]
GI, MI = 2**30, 2**20


def request(cpu: int = 1, memory: int = 1 * GI, disk: int = 10 * GI) -> Request:
    return Request(cpu, memory, disk)


def sizes(request: Request) -> tuple[int, int, int]:
    return request.cpu, request.memory, request.disk


def test_request_of_vm(make_vm: Maker) -> None:
    vm = make_vm("vm", cpu=3, memory="1536Mi", disk="20Gi")
    assert sizes(Request.of(vm)) == (3, 1536 * MI, 20 * GI)


def test_request_of_vm_with_model_defaults() -> None:
    vm = dump(VirtualMachine.model_validate({"metadata": {"name": "d"}, "spec": {"image": "x"}}))
    assert sizes(Request.of(vm)) == (2, 2 * GI, 10 * GI)


def test_allocatable_of_a_heartbeat_node(make_node: Maker) -> None:
    node = make_node("n", cpu=8, memory=16 * GI, disk=500 * GI, vms=8)
    assert Allocatable.of(node) == Allocatable(8, 16 * GI, 500 * GI, 8)


@pytest.mark.parametrize(
    ("reported", "max_vms", "expected"),
    [
        (8, None, 8),  # no limit set: what the agent reports
        (8, 3, 3),  # the node setting is lower
        (8, 20, 8),  # the node setting cannot raise what the host can do
        (0, 5, 5),  # the agent reports no VM count: the setting alone
        (8, 0, 0),  # maxVMs 0 closes the node to new VMs
        (0, None, 0),
    ],
)
def test_allocatable_vms_with_max_vms(
    make_node: Maker, reported: int, max_vms: int | None, expected: int
) -> None:
    node = make_node("n", vms=reported, max_vms=max_vms)
    assert Allocatable.of(node).vms == expected


def test_allocatable_of_a_node_without_status() -> None:
    node = {"kind": "Node", "metadata": {"name": "new"}, "spec": {}}
    assert Allocatable.of(node) == Allocatable(0, 0, 0, 0)
    assert Allocatable.of(node | {"status": {"allocatable": {"memory": "0", "disk": "0"}}}) == (
        Allocatable(0, 0, 0, 0)
    )


def test_node_ready(make_node: Maker) -> None:
    assert node_ready(make_node("n"))
    assert not node_ready(make_node("n", ready=False))
    assert not node_ready({"metadata": {"name": "n"}, "status": {"conditions": []}})
    unknown = make_node("n")
    unknown["status"]["conditions"][0]["status"] = "Unknown"
    assert not node_ready(unknown)


@pytest.mark.parametrize(
    ("node_kwargs", "usage", "req", "reason"),
    [
        ({}, Usage(), request(), None),
        ({"ready": False}, Usage(), request(), "not ready"),
        ({"unschedulable": True}, Usage(), request(), "cordoned"),
        ({"vms": 2}, Usage(vms=2), request(), "at their VM limit"),
        ({"max_vms": 1}, Usage(vms=1), request(), "at their VM limit"),
        ({"cpu": 4}, Usage(cpu=3, vms=1), request(cpu=2), "insufficient cpu"),
        (
            {"memory": 8 * GI},
            Usage(cpu=1, memory=7 * GI, vms=1),
            request(memory=2 * GI),
            "insufficient memory",
        ),
        (
            {"disk": 100 * GI},
            Usage(disk=95 * GI, vms=1),
            request(disk=10 * GI),
            "insufficient disk",
        ),
        # exactly full is still a fit
        (
            {"cpu": 4, "memory": 8 * GI, "disk": 100 * GI, "vms": 2},
            Usage(cpu=2, memory=6 * GI, disk=90 * GI, vms=1),
            request(cpu=2, memory=2 * GI, disk=10 * GI),
            None,
        ),
    ],
    ids=[
        "fits",
        "not-ready",
        "cordoned",
        "vm-limit",
        "max-vms",
        "cpu",
        "memory",
        "disk",
        "exactly-full",
    ],
)
def test_why_not(
    make_node: Maker, node_kwargs: dict[str, Any], usage: Usage, req: Request, reason: str | None
) -> None:
    assert why_not(make_node("n", **node_kwargs), usage, req) == reason


def test_a_node_whose_accelerator_stopped_working_is_passed_over(make_node: Maker) -> None:
    node = make_node("n")
    conditions = node["status"]["conditions"]
    conditions.append({"type": "AcceleratorWorks", "status": "True", "message": "kvm is fast"})
    assert why_not(node, Usage(), request()) is None
    conditions[-1].update(status="False", message="guests no longer start under kvm")
    assert why_not(node, Usage(), request()) == "accelerator failing"
    assert unschedulable_message(1, Counter(["accelerator failing"])) == (
        "0/1 nodes available: 1 accelerator failing"
    )


def test_why_not_checks_cheapest_and_hardest_first(make_node: Maker) -> None:
    full = Usage(cpu=100, memory=100 * GI, disk=1000 * GI, vms=100)
    assert why_not(make_node("n", ready=False, unschedulable=True), full, request()) == (
        "not ready"
    )
    assert why_not(make_node("n", unschedulable=True), full, request()) == "cordoned"
    deleting = make_node("n")
    deleting["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00.000000Z"
    assert why_not(deleting, Usage(), request()) == "being deleted"


@pytest.mark.parametrize(
    ("vm_spec", "namespace", "node_change", "fits"),
    [
        ({"nodeSelector": {"xcode": "16"}}, "default", {"labels": {"xcode": "16"}}, True),
        ({"nodeSelector": {"xcode": "16"}}, "default", {"labels": {"xcode": "15"}}, False),
        ({"nodeSelector": {"xcode": "16"}}, "default", {}, False),
        ({"arch": "arm64"}, "default", {"arch": "arm64"}, True),
        ({"arch": "arm64"}, "default", {"arch": "amd64"}, False),
        ({"os": "macos"}, "default", {"guestOS": ["linux", "macos"]}, True),
        ({"os": "macos"}, "default", {"guestOS": ["linux"]}, False),
        ({}, "team-a", {"dedicated": ["team-a"]}, True),
        ({}, "default", {"dedicated": ["team-a"]}, False),
    ],
    ids=[
        "tag-present",
        "tag-other-value",
        "tag-missing",
        "arch-same",
        "arch-other",
        "guest-os-supported",
        "guest-os-unsupported",
        "dedicated-to-mine",
        "dedicated-to-other",
    ],
)
def test_why_not_node_traits(
    make_node: Maker,
    make_vm: Maker,
    vm_spec: dict[str, Any],
    namespace: str,
    node_change: dict[str, Any],
    fits: bool,
) -> None:
    node = make_node("n")
    change = dict(node_change)
    node["metadata"]["labels"] = change.pop("labels", {})
    if dedicated := change.pop("dedicated", None):
        node["spec"]["dedicatedNamespaces"] = dedicated
    node["status"].update(change)
    request = Request.of(make_vm("vm", namespace, **vm_spec))
    reason = why_not(node, Usage(), request)
    assert (reason is None) is fits, reason


@pytest.mark.parametrize(
    ("total", "reasons", "message"),
    [
        (
            5,
            Counter({"not ready": 2, "insufficient memory": 3}),
            "0/5 nodes available: 3 insufficient memory, 2 not ready",
        ),
        (1, Counter({"cordoned": 1}), "0/1 nodes available: 1 cordoned"),
        (
            4,
            Counter({"insufficient cpu": 1, "at their VM limit": 2, "not ready": 1}),
            "0/4 nodes available: 2 at their VM limit, 1 insufficient cpu, 1 not ready",
        ),
        (0, Counter(), "0/0 nodes available: no nodes have joined"),
    ],
)
def test_unschedulable_message(total: int, reasons: Counter[str], message: str) -> None:
    assert unschedulable_message(total, reasons) == message


def test_unschedulable_message_from_why_not(make_node: Maker) -> None:
    nodes = [
        make_node("a", memory=2 * GI),
        make_node("b", memory=2 * GI),
        make_node("c", memory=2 * GI),
        make_node("d", ready=False),
        make_node("e", ready=False),
    ]
    req = request(memory=4 * GI)
    reasons: Counter[str] = Counter()
    for node in nodes:
        reason = why_not(node, Usage(), req)
        assert reason is not None
        reasons[reason] += 1
    assert unschedulable_message(len(nodes), reasons) == (
        "0/5 nodes available: 3 insufficient memory, 2 not ready"
    )


# -- property: first-fit never overcommits, and what is left fits nowhere --------------------

_nodes = st.lists(
    st.fixed_dictionaries(
        {
            "cpu": st.integers(0, 16),
            "memory": st.integers(1, 64).map(lambda n: n * 512 * MI),
            "disk": st.integers(1, 200).map(lambda n: n * 10 * GI),
            "vms": st.integers(0, 6),
            "max_vms": st.none() | st.integers(0, 6),
            "ready": st.booleans(),
            "unschedulable": st.booleans(),
        }
    ),
    min_size=1,
    max_size=5,
)
_requests = st.lists(
    st.builds(
        Request,
        st.integers(1, 8),
        st.integers(1, 32).map(lambda n: n * 256 * MI),
        st.integers(1, 100).map(lambda n: n * 5 * GI),
    ),
    max_size=25,
)


def _add(usage: Usage, req: Request) -> Usage:
    return Usage(
        usage.cpu + req.cpu, usage.memory + req.memory, usage.disk + req.disk, usage.vms + 1
    )


@settings(max_examples=200, deadline=None)
@given(specs=_nodes, requests=_requests)
def test_first_fit_never_overcommits(
    make_node: Maker, specs: list[dict[str, Any]], requests: list[Request]
) -> None:
    nodes = [make_node(f"n{i}", **spec) for i, spec in enumerate(specs)]
    usage = [Usage() for _ in nodes]
    unplaced: list[Request] = []
    for req in requests:
        for i, node in enumerate(nodes):
            if why_not(node, usage[i], req) is None:
                usage[i] = _add(usage[i], req)
                break
        else:
            unplaced.append(req)

    for node, used, spec in zip(nodes, usage, specs, strict=True):
        alloc = Allocatable.of(node)
        assert used.cpu <= alloc.cpu
        assert used.memory <= alloc.memory
        assert used.disk <= alloc.disk
        assert used.vms <= alloc.vms
        if not spec["ready"] or spec["unschedulable"]:
            assert used == Usage()
    for req in unplaced:
        assert all(
            why_not(node, used, req) is not None for node, used in zip(nodes, usage, strict=True)
        )


# -- the filters the design names, through a real scheduling pass ---------------------------
#
# DESIGN.md (Scheduling): "Filters: Ready, not cordoned, fresh heartbeat; arch/os/backend can run
# the guest; namespace dedication; required tags; free cpu, memory, disk; VM count below maxVMs".
# A VM that one node cannot run must land on the other one, or nowhere.


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    yield store
    store.close()


def schedule(store: Store) -> dict[str, str | None]:
    Scheduler(store, WatchHub(store)).run_once()
    vms, _ = store.list_objects("VirtualMachine")
    return {vm["metadata"]["name"]: vm["spec"].get("nodeName") for vm in vms}


def test_scheduler_binds_where_vms_fit_and_explains_the_rest(
    store: Store, make_node: Maker, make_vm: Maker
) -> None:
    store.create(make_node("a-host", ready=False))
    store.create(make_node("b-host", cpu=2))
    store.create(make_node("c-host", cpu=8))
    store.create(make_vm("small", cpu=2))
    store.create(make_vm("big", cpu=4))
    store.create(make_vm("huge", cpu=16))
    assert schedule(store) == {"big": "c-host", "huge": None, "small": "b-host"}
    huge = store.get("VirtualMachine", "default", "huge")
    message = "0/3 nodes available: 2 insufficient cpu, 1 not ready"
    assert huge["status"]["message"] == message


@pytest.mark.parametrize(
    ("vm_spec", "wrong", "right"),
    [
        (
            {"nodeSelector": {"xcode": "16"}},
            {"labels": {"xcode": "15"}},
            {"labels": {"xcode": "16"}},
        ),
        ({"arch": "arm64"}, {"arch": "amd64"}, {"arch": "arm64"}),
        (
            {"os": "macos"},
            {"guestOS": ["linux"], "os": "darwin", "arch": "arm64"},
            {"guestOS": ["linux", "macos"], "os": "darwin", "arch": "arm64"},
        ),
        ({}, {"dedicated": ["team-a"]}, {}),
        ({}, {"heartbeat": "2024-01-01T00:00:00.000000Z"}, {}),
    ],
    ids=["required-tags", "arch", "guest-os", "namespace-dedication", "stale-heartbeat"],
)
def test_scheduler_honours_node_filters(
    store: Store,
    make_node: Maker,
    make_vm: Maker,
    vm_spec: dict[str, Any],
    wrong: dict[str, Any],
    right: dict[str, Any],
) -> None:
    def node(name: str, traits: dict[str, Any]) -> Obj:
        traits = dict(traits)
        built = make_node(name, heartbeat=traits.pop("heartbeat", None))
        built["metadata"]["labels"] = traits.pop("labels", {})
        if dedicated := traits.pop("dedicated", None):
            built["spec"]["dedicatedNamespaces"] = dedicated
        built["status"].update(traits)
        return built

    store.create(node("a-wrong", wrong))  # first in list order: first-fit would pick it
    store.create(node("b-right", right))
    spec = {"arch": "arm64"} if vm_spec.get("os") == "macos" else {}
    store.create(make_vm("vm", "default", **(spec | vm_spec)))
    assert schedule(store) == {"vm": "b-right"}
