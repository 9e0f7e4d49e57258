"""Usage from the store's own record (SQLite and PostgreSQL): a VM holds its cpu and memory from
its bind to its deletion, saving it as a warm-pool entry or moving it; a report sums the
stretches in a window, per namespace, image or node."""

import time
from collections.abc import Callable
from typing import Any

from builders import build_vm
from shoal.store import usage
from shoal.store.store import Obj, Store

GI = 2**30


def bind(store: Store, name: str, node: str) -> None:
    def change(vm: Obj) -> Obj:
        vm["spec"]["nodeName"] = node
        return vm

    store.mutate("VirtualMachine", "default", name, change)


def report(store: Store, since: float, group_by: tuple[str, ...]) -> dict[Any, dict[str, Any]]:
    with store.snapshot() as conn:
        now = usage.read_now(conn)
        _, _, items = usage.report(conn, now - since, now, group_by)
    return {tuple(item[g] for g in group_by): item for item in items}


def test_a_vm_is_charged_from_its_bind_to_its_deletion(open_store: Callable[..., Store]) -> None:
    store = open_store()
    store.create(build_vm("big", cpu=4, memory="2Gi", image="xcode"))
    store.create(build_vm("small", cpu=1, memory="1Gi", image="ubuntu"))
    assert report(store, 3600, ("namespace",)) == {}, "unbound VMs hold nothing"
    bind(store, "big", "n1")
    bind(store, "small", "n2")
    time.sleep(0.3)
    store.delete("VirtualMachine", "default", "big")  # no finalizers: gone now
    time.sleep(0.3)
    by_image = report(store, 3600, ("image",))
    big, small = by_image[("xcode",)], by_image[("ubuntu",)]
    assert big["vms"] == small["vms"] == 1
    assert big["cpuSeconds"] == 4 * big["vmSeconds"]
    assert big["memoryByteSeconds"] == 2 * GI * big["vmSeconds"]
    assert small["vmSeconds"] > big["vmSeconds"] > 0, "the deleted one stopped counting"
    later = report(store, 3600, ("image",))
    assert later[("xcode",)]["vmSeconds"] == big["vmSeconds"], "a closed stretch stays as it is"
    assert later[("ubuntu",)]["vmSeconds"] > small["vmSeconds"], "a bound VM keeps counting"
    by_node = report(store, 3600, ("namespace", "node"))
    assert set(by_node) == {("default", "n1"), ("default", "n2")}
    time.sleep(0.2)
    recent = report(store, 0.1, ("image",))
    assert set(recent) == {("ubuntu",)}, "a window after big's deletion holds only small"
    assert recent[("ubuntu",)]["vmSeconds"] <= 0.1 + 1e-6


def test_a_saved_entry_and_a_moved_vm_are_charged_as_what_they_hold(
    open_store: Callable[..., Store],
) -> None:
    store = open_store()
    store.create(build_vm("entry", cpu=2))
    bind(store, "entry", "n1")
    time.sleep(0.2)

    def saved(vm: Obj) -> Obj:
        vm["status"] = {
            "phase": "Saved",
            "conditions": [
                {"type": "Saved", "status": "True", "reason": "Saved", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ],
        }  # fmt: skip
        return vm

    store.mutate("VirtualMachine", "default", "entry", saved)
    held = report(store, 3600, ("node",))[("n1",)]["vmSeconds"]
    time.sleep(0.2)
    assert report(store, 3600, ("node",))[("n1",)]["vmSeconds"] == held, "saved: not charged"

    store.create(build_vm("mover", cpu=1))
    bind(store, "mover", "n1")
    time.sleep(0.1)
    bind(store, "mover", "n2")  # moved (as OnNodeLost rebinding does)
    by_node = report(store, 3600, ("node",))
    assert by_node[("n2",)]["vms"] == 1 and by_node[("n1",)]["vms"] == 2
