"""Warm pools' pure parts: the pool loop's plan, and claims in the scheduler and its binder, on a
store (two schedulers racing for entries never hand one out twice)."""

import threading
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import build_node, build_vm
from shoal.api.objects import validate
from shoal.model.meta import now_iso
from shoal.model.registry import BY_KIND
from shoal.model.warmpool import POOL_LABEL
from shoal.scheduler.binder import ENTRY_TAKEN, Claim, Decision, bind_many
from shoal.scheduler.loop import Scheduler, SchedulerSettings
from shoal.store.store import Obj, Store
from shoal.store.watch import WatchHub
from shoal.warmpool import entries
from shoal.warmpool.entries import EntryView, plan

GI = 2**30
NOW = 1_000_000.0


def view(name: str, state: str = "ready", **fields: Any) -> EntryView:
    base: dict[str, Any] = {
        "name": name,
        "uid": f"uid-{name}",
        "node": "n1",
        "state": state,
        "created": NOW - 100,
        "saved": NOW - 50 if state == "ready" else None,
        "template": "t1",
        "message": "",
    }
    return EntryView(**(base | fields))


PLAN_CASES = [
    # (spec, entries, make, discarded names and why)
    ({"size": 3}, [], 3, {}),
    ({"size": 2}, [view("a"), view("b", "refilling")], 0, {}),
    ({"size": 2}, [view("a", "claiming"), view("b", "deleting")], 2, {}),
    ({"size": 1}, [view("a", "failed", message="boot")], 1, {"a": "it failed: boot"}),
    (
        {"size": 1},
        [view("a", template="old")],
        1,
        {"a": "the pool, its VMConfig or its image changed"},
    ),
    ({"size": 1, "maxAgeSeconds": 60}, [view("a")], 1, {"a": "older than maxAgeSeconds (60)"}),
    (
        {"size": 1, "maxIdleSeconds": 30},
        [view("a")],
        1,
        {"a": "not claimed within maxIdleSeconds (30)"},
    ),
    ({"size": 1, "maxIdleSeconds": 30}, [view("a", "refilling")], 0, {}),  # not saved yet
    # Scaled down: the ready ones stay, the youngest still booting go first.
    (
        {"size": 1},
        [view("young", "refilling", created=NOW - 1), view("old", "refilling"), view("r")],
        0,
        {"young": "more than size (1)", "old": "more than size (1)"},
    ),
]


@pytest.mark.parametrize(("spec", "seen", "make", "discarded"), PLAN_CASES)
def test_plan(spec: Obj, seen: list[EntryView], make: int, discarded: dict[str, str]) -> None:
    decided = plan(spec, "t1", seen, now=NOW)
    assert decided.make == make
    assert dict(decided.discard) == discarded


STATES = st.sampled_from(["ready", "refilling", "claiming", "deleting", "failed"])


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 6),
    found=st.lists(st.tuples(STATES, st.booleans(), st.integers(0, 200)), max_size=10),
    max_age=st.one_of(st.none(), st.integers(60, 150)),
)
def test_plan_keeps_exactly_size_live_entries(
    size: int, found: list[tuple[str, bool, int]], max_age: int | None
) -> None:
    seen = [
        view(f"e{i}", state, template="t1" if current else "t0", created=NOW - age)
        for i, (state, current, age) in enumerate(found)
    ]
    spec: Obj = {"size": size, "maxAgeSeconds": max_age}
    decided = plan(spec, "t1", seen, now=NOW)
    discarded = {name for name, _ in decided.discard}
    counted = [e for e in seen if e.state not in ("claiming", "deleting")]
    kept = [e for e in counted if e.name not in discarded]
    assert len(kept) + decided.make == size
    assert decided.make >= 0
    assert all(e.state not in ("claiming", "deleting") for e in seen if e.name in discarded)
    assert all(e.template == "t1" and e.state != "failed" for e in kept)
    if max_age is not None:
        assert all(NOW - e.created <= max_age for e in kept)


# -- claims on a store ----------------------------------------------------------------------


def pool(name: str = "p", config: str = "ci", mode: str = "suspended") -> Obj:
    body = {"metadata": {"name": name, "namespace": "default"}}
    return validate(BY_KIND["WarmPool"], body | {"spec": {"config": config, "mode": mode}})


def saved_entry(name: str, node: str, pool_name: str = "p", mode: str = "suspended") -> Obj:
    vm = build_vm(name, cpu=1, memory="1Gi", disk="10Gi", nodeName=node)
    vm["metadata"]["labels"] = {POOL_LABEL: pool_name}
    vm["metadata"]["annotations"] = {entries.MODE_ANNOTATION: mode}
    vm["metadata"]["finalizers"] = ["shoal.dev/agent"]
    vm["status"] = {
        "phase": "Saved",
        "conditions": [
            {
                "type": "Saved",
                "status": "True",
                "reason": "Saved",
                "message": "",
                "lastTransitionTime": now_iso(),
            }
        ],
    }
    return vm


def job(name: str, config: str | None = "ci", **spec: Any) -> Obj:
    return build_vm(name, **({"cpu": 1, "memory": "1Gi", "disk": "10Gi"} | spec), config=config)


def warm_node(name: str, **traits: Any) -> Obj:
    built = build_node(name, **traits)
    built["status"]["warmStart"] = ["linux"]
    return built


def run_until_settled(scheduler: Scheduler, passes: int = 20) -> None:
    for _ in range(passes):
        scheduler.run_once()
        if not scheduler._again:
            return


@pytest.fixture
def store(tmp_path: Any) -> Any:
    opened = Store(f"sqlite:///{tmp_path}/s.db")
    yield opened
    opened.close()


def test_saved_entries_hold_their_disk_only(store: Store) -> None:
    store.create(warm_node("n1", cpu=2, vms=2))
    for i in range(5):
        store.create(saved_entry(f"e{i}", "n1"))
    usage = store.node_usages(["n1"])["n1"]
    assert (usage.cpu, usage.memory, usage.vms, usage.disk) == (0, 0, 0, 5 * (10 + 1) * GI)
    # A node full of saved entries still takes as many VMs as it has room for.
    for i in range(3):
        store.create(job(f"other{i}", config=None))
    run_until_settled(Scheduler(store, WatchHub(store)))
    placed = Counter(vm["spec"].get("nodeName") for vm in store.list_objects("VirtualMachine")[0])
    assert placed == {"n1": 7, None: 1}


def test_a_vm_of_a_pooled_config_takes_an_entry_of_its_shape_where_it_is(store: Store) -> None:
    store.create(warm_node("n1"))
    store.create(warm_node("n2"))
    store.create(pool())
    store.create(saved_entry("e-n2", "n2"))
    store.create(job("fits"))
    store.create(job("bigger", cpu=2))  # another shape: boots cold, anywhere
    store.create(job("unpooled", config="other"))
    run_until_settled(Scheduler(store, WatchHub(store)))
    vms = {vm["metadata"]["name"]: vm for vm in store.list_objects("VirtualMachine")[0]}
    fits = vms["fits"]["metadata"]["annotations"]
    assert vms["fits"]["spec"]["nodeName"] == "n2"
    assert fits[entries.CLAIM_POOL_ANNOTATION] == "p"
    assert fits[entries.CLAIM_ENTRY_ANNOTATION] == vms["e-n2"]["metadata"]["uid"]
    consumed = vms["e-n2"]["metadata"]
    assert consumed["deletionTimestamp"]
    assert consumed["annotations"][entries.CLAIMED_BY_ANNOTATION] == vms["fits"]["metadata"]["uid"]
    bigger = vms["bigger"]["metadata"]["annotations"]
    assert bigger[entries.CLAIM_POOL_ANNOTATION] == "p"
    assert entries.CLAIM_ENTRY_ANNOTATION not in bigger
    assert not vms["unpooled"]["metadata"]["annotations"]


def test_a_clone_golden_serves_many_and_stays(store: Store) -> None:
    store.create(warm_node("n1"))
    store.create(pool(mode="clone"))
    store.create(saved_entry("golden", "n1", mode="clone"))
    for i in range(3):
        store.create(job(f"c{i}"))
    run_until_settled(Scheduler(store, WatchHub(store)))
    vms = {vm["metadata"]["name"]: vm for vm in store.list_objects("VirtualMachine")[0]}
    golden = vms["golden"]["metadata"]
    assert not golden.get("deletionTimestamp")
    for i in range(3):
        assert (
            vms[f"c{i}"]["metadata"]["annotations"][entries.CLAIM_ENTRY_ANNOTATION]
            == (golden["uid"])
        )


def test_unplaced_goldens_of_one_pool_go_to_different_nodes(store: Store) -> None:
    for name in ("n1", "n2"):
        store.create(warm_node(name))
    store.create(build_node("no-warm-start"))
    for i in range(3):
        golden = build_vm(f"g{i}", cpu=1)
        golden["metadata"]["labels"] = {POOL_LABEL: "p"}
        golden["metadata"]["annotations"] = {entries.MODE_ANNOTATION: "clone"}
        store.create(golden)
    run_until_settled(Scheduler(store, WatchHub(store)))
    vms = store.list_objects("VirtualMachine")[0]
    placed = sorted(vm["spec"]["nodeName"] for vm in vms if vm["spec"].get("nodeName"))
    assert placed == ["n1", "n2"]
    (waiting,) = [vm for vm in vms if not vm["spec"].get("nodeName")]
    assert waiting["status"]["message"] == (
        "0/3 nodes available: 2 already holding a golden of the pool, "
        "1 cannot keep warm-pool entries of linux guests"
    )


def test_the_binder_refuses_an_entry_taken_or_changed(store: Store) -> None:
    store.create(warm_node("n1"))
    entry = store.create(saved_entry("e", "n1"))
    first, second = store.create(job("a")), store.create(job("b"))
    meta = entry["metadata"]
    claim = Claim("p", "e", meta["uid"], meta["resourceVersion"], consume=True)

    def decision(vm: Obj) -> Decision:
        m = vm["metadata"]
        return Decision("default", m["name"], m["resourceVersion"], "n1", pool="p", claim=claim)

    assert bind_many(store, [decision(first), decision(second)]) == [None, ENTRY_TAKEN]
    assert not store.get("VirtualMachine", "default", "b")["spec"].get("nodeName")
    assert bind_many(store, [decision(store.get("VirtualMachine", "default", "b"))]) == [
        ENTRY_TAKEN
    ]


def test_two_schedulers_racing_for_entries_never_hand_one_out_twice(store_url: str) -> None:
    """50 VMs of a pooled config, 10 entries on 5 nodes, two scheduler loops: each entry goes to
    at most one VM, every VM is bound once, and no node is overcommitted."""
    store = Store(store_url)
    try:
        for i in range(5):
            store.create(warm_node(f"n{i}", cpu=12, vms=12, memory=64 * GI))
        store.create(pool())
        with store.tx() as tx:
            for i in range(10):
                tx.insert(saved_entry(f"e{i}", f"n{i % 5}"))
            for i in range(50):
                tx.insert(job(f"vm{i:02d}"))
        schedulers = [
            Scheduler(store, WatchHub(store), SchedulerSettings(batch=7)) for _ in range(2)
        ]
        errors: list[BaseException] = []

        def work(scheduler: Scheduler) -> None:
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    scheduler.run_once()
                    if all(
                        vm["spec"].get("nodeName") for vm in store.list_objects("VirtualMachine")[0]
                    ):
                        return
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(s,)) for s in schedulers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        vms = store.list_objects("VirtualMachine")[0]
        jobs = [vm for vm in vms if vm["metadata"]["name"].startswith("vm")]
        taken = [
            vm["metadata"]["annotations"][entries.CLAIM_ENTRY_ANNOTATION]
            for vm in jobs
            if entries.CLAIM_ENTRY_ANNOTATION in vm["metadata"]["annotations"]
        ]
        assert len(taken) == len(set(taken)) == 10
        assert all(vm["spec"].get("nodeName") for vm in jobs)
        usages = store.node_usages([f"n{i}" for i in range(5)])
        assert sum(u.cpu for u in usages.values()) == 50
        assert all(u.cpu <= 12 and u.vms <= 12 for u in usages.values())
    finally:
        store.close()
