"""The scheduler's filters and scores, table-driven, and two schedulers racing on one store."""

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from builders import build_node, build_vm
from shoal.model.meta import now_iso
from shoal.scheduler import placement as p
from shoal.scheduler.loop import Scheduler, SchedulerSettings
from shoal.scheduler.placement import Allocatable, Request, Situation, why_not
from shoal.scheduler.scores import score
from shoal.store.store import Obj, Store, Usage
from shoal.store.watch import WatchHub

GI = 2**30


def node(name: str = "n", **traits: Any) -> Obj:
    labels = traits.pop("labels", {})
    spec = {
        k: traits.pop(k)
        for k in ("unschedulable", "dedicatedNamespaces", "maxVMs", "maxMacOSVMs")
        if k in traits
    }
    status = {
        k: traits.pop(k)
        for k in ("arch", "guestOS", "cachedImages", "lastHeartbeatTime")
        if k in traits
    }
    built = build_node(name, **traits)
    built["metadata"]["labels"] = labels
    built["spec"].update(spec)
    built["status"].update(status)
    return built


def req(**fields: Any) -> Request:
    base: dict[str, Any] = {"cpu": 1, "memory": GI, "disk": 10 * GI}
    return Request(**(base | fields))


def check(
    fn: p.Filter, n: Obj, r: Request, usage: Usage = Usage(), now: float | None = None
) -> str | None:
    return fn(n, r, Situation(usage, now, 40.0, Allocatable.of(n)))


FILTER_CASES = [
    # (filter, node, request, usage, now, expected reason or None)
    (p.not_deleting, node(), req(), Usage(), None, None),
    (p.ready, node(ready=False), req(), Usage(), None, "not ready"),
    (p.ready, node(), req(), Usage(), None, None),
    (p.schedulable, node(unschedulable=True), req(), Usage(), None, "cordoned"),
    (p.schedulable, node(), req(), Usage(), None, None),
    (
        p.heartbeat_fresh,
        node(lastHeartbeatTime="2020-01-01T00:00:00.000000Z"),
        req(),
        Usage(),
        time.time(),
        "not heartbeating",
    ),
    (p.heartbeat_fresh, node(lastHeartbeatTime=now_iso()), req(), Usage(), time.time(), None),
    (p.arch_matches, node(arch="amd64"), req(arch="arm64"), Usage(), None, "not arm64"),
    (p.arch_matches, node(arch="arm64"), req(arch="arm64"), Usage(), None, None),
    (
        p.runs_guest_os,
        node(guestOS=["linux"]),
        req(os="macos"),
        Usage(),
        None,
        "cannot run macos guests",
    ),
    (p.runs_guest_os, node(guestOS=["linux", "macos"]), req(os="macos"), Usage(), None, None),
    (
        p.dedication,
        node(dedicatedNamespaces=["team-a"]),
        req(namespace="team-b"),
        Usage(),
        None,
        "dedicated to other namespaces",
    ),
    (
        p.dedication,
        node(dedicatedNamespaces=["team-a"]),
        req(namespace="team-a"),
        Usage(),
        None,
        None,
    ),
    (p.dedication, node(), req(namespace="team-b"), Usage(), None, None),
    (
        p.required_tags,
        node(labels={"xcode": "15"}),
        req(node_selector=(("xcode", "16"),)),
        Usage(),
        None,
        "missing tag xcode=16",
    ),
    (
        p.required_tags,
        node(labels={"xcode": "16", "gpu": "yes"}),
        req(node_selector=(("xcode", "16"),)),
        Usage(),
        None,
        None,
    ),
    (p.vm_slots, node(vms=2), req(), Usage(vms=2), None, "at their VM limit"),
    (p.vm_slots, node(vms=8, maxVMs=1), req(), Usage(vms=1), None, "at their VM limit"),
    (p.vm_slots, node(vms=2), req(), Usage(vms=1), None, None),
    (p.macos_licence, node(), req(os="macos"), Usage(macos=2), None, "at their macOS guest limit"),
    (p.macos_licence, node(maxMacOSVMs=3), req(os="macos"), Usage(macos=2), None, None),
    (p.macos_licence, node(), req(), Usage(macos=2), None, None),
    (p.cpu, node(cpu=4), req(cpu=3), Usage(cpu=2), None, "insufficient cpu"),
    (p.cpu, node(cpu=4), req(cpu=2), Usage(cpu=2), None, None),
    (
        p.memory,
        node(memory=4 * GI),
        req(memory=2 * GI),
        Usage(memory=3 * GI),
        None,
        "insufficient memory",
    ),
    (p.memory, node(memory=4 * GI), req(memory=GI), Usage(memory=3 * GI), None, None),
    (
        p.disk,
        node(disk=100 * GI),
        req(disk=60 * GI),
        Usage(disk=50 * GI),
        None,
        "insufficient disk",
    ),
    (p.disk, node(disk=100 * GI), req(disk=50 * GI), Usage(disk=50 * GI), None, None),
]


@pytest.mark.parametrize(("fn", "n", "r", "usage", "now", "expected"), FILTER_CASES)
def test_each_filter(
    fn: p.Filter, n: Obj, r: Request, usage: Usage, now: float | None, expected: str | None
) -> None:
    assert check(fn, n, r, usage, now) == expected


def test_filters_run_cheapest_first_and_name_the_first_failure() -> None:
    assert p.FILTERS.index(p.ready) < p.FILTERS.index(p.required_tags) < p.FILTERS.index(p.cpu)
    cordoned_and_full = node(unschedulable=True, cpu=1)
    assert why_not(cordoned_and_full, Usage(cpu=1), req()) == "cordoned"


def test_image_cached_beats_everything_then_preferred_tags_then_profile() -> None:
    r = req(image="macos-15", preferred=(("fast", "yes"),))
    cached = node("cached", cachedImages=["macos-15"])
    preferred = node("preferred", labels={"fast": "yes"})
    plain = node("plain")
    empty = Usage()
    assert score(cached, empty, r) > score(preferred, empty, r) > score(plain, empty, r)


@pytest.mark.parametrize(("profile", "winner"), [("pack", "busy"), ("spread", "idle")])
def test_pack_prefers_the_fuller_node_and_spread_the_emptier(profile: str, winner: str) -> None:
    r = req(profile=profile)
    scores = {
        "busy": score(node("busy", cpu=8), Usage(cpu=6, memory=6 * GI, vms=3), r),
        "idle": score(node("idle", cpu=8), Usage(), r),
    }
    assert max(scores, key=lambda k: scores[k]) == winner


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path}/s.db")
    yield opened
    opened.close()


def run_until_settled(scheduler: Scheduler, passes: int = 20) -> None:
    for _ in range(passes):
        scheduler.run_once()
        if not scheduler._again:
            return


def placements(store: Store) -> dict[str, str | None]:
    return {
        vm["metadata"]["name"]: vm["spec"].get("nodeName")
        for vm in store.list_objects("VirtualMachine")[0]
    }


def test_pass_uses_scores_priority_and_does_not_block_small_vms(store: Store) -> None:
    store.create(node("a-plain", cpu=16))
    store.create(node("b-cached", cpu=16, cachedImages=["xcode"]))
    store.create(build_vm("giant", cpu=64, image="xcode", priority=10))
    store.create(build_vm("cached-image", cpu=2, image="xcode"))
    store.create(build_vm("other-image", cpu=2, image="linux"))
    run_until_settled(Scheduler(store, WatchHub(store)))
    assert placements(store) == {
        "cached-image": "b-cached",
        "giant": None,
        "other-image": "b-cached",
    }
    giant = store.get("VirtualMachine", "default", "giant")
    assert giant["status"]["message"] == "0/2 nodes available: 2 insufficient cpu"


def test_spread_profile_spreads(store: Store) -> None:
    for name in ("n1", "n2", "n3"):
        store.create(node(name, cpu=16))
    for i in range(3):
        store.create(build_vm(f"vm{i}", cpu=2))
    run_until_settled(
        Scheduler(store, WatchHub(store), SchedulerSettings(default_profile="spread"))
    )
    assert sorted(placements(store).values()) == ["n1", "n2", "n3"]


def test_pack_profile_packs(store: Store) -> None:
    for name in ("n1", "n2", "n3"):
        store.create(node(name, cpu=16))
    for i in range(3):
        store.create(build_vm(f"vm{i}", cpu=2))
    run_until_settled(Scheduler(store, WatchHub(store)))
    assert len(set(placements(store).values())) == 1


def test_at_most_two_macos_guests_per_apple_host(store: Store) -> None:
    store.create(node("mac", arch="arm64", guestOS=["macos"], cpu=32, vms=10))
    for i in range(3):
        store.create(build_vm(f"mac{i}", os="macos", arch="arm64"))
    run_until_settled(Scheduler(store, WatchHub(store)))
    assert Counter(placements(store).values()) == {"mac": 2, None: 1}
    waiting = next(
        vm for vm in store.list_objects("VirtualMachine")[0] if not vm["spec"].get("nodeName")
    )
    assert waiting["status"]["message"] == "0/1 nodes available: 1 at their macOS guest limit"


def test_two_schedulers_racing_never_overcommit(store_url: str) -> None:
    """Two scheduler loops on one store, 2,000 VMs, 100 nodes: every VM bound exactly once,
    no node over capacity at any version of the change log."""
    store = Store(store_url)
    try:
        nodes, per_node = 100, 20
        for i in range(nodes):
            store.create(node(f"n{i:03d}", cpu=per_node, memory=per_node * GI, vms=per_node))
        start = store.current_rv()
        with store.tx() as tx:
            for i in range(nodes * per_node):
                tx.insert(build_vm(f"vm{i:04d}", cpu=1, memory="1Gi"))
        schedulers = [
            Scheduler(store, WatchHub(store), SchedulerSettings(batch=200)) for _ in range(2)
        ]
        errors: list[BaseException] = []

        def work(scheduler: Scheduler) -> None:
            try:
                for _ in range(40):
                    scheduler.run_once()
                    if all(placements(store).values()):
                        return
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(s,)) for s in schedulers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        final = placements(store)
        assert all(final.values()), [name for name, where in final.items() if not where][:5]
        assert max(Counter(final.values()).values()) <= per_node
        bound_at: dict[str, str] = {}
        held: Counter[str] = Counter()
        for change in store.changes_since(start, limit=100_000):
            if change.kind != "VirtualMachine" or not change.object["spec"].get("nodeName"):
                continue
            name = change.name
            if name in bound_at:
                assert bound_at[name] == change.object["spec"]["nodeName"]  # never moved
                continue
            bound_at[name] = change.object["spec"]["nodeName"]
            held[bound_at[name]] += 1
            assert held[bound_at[name]] <= per_node
        assert len(bound_at) == nodes * per_node
        assert sum(s.passes for s in schedulers) >= 2
    finally:
        store.close()
