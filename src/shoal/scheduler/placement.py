"""Pure placement logic of the first scheduler: does a VM fit a node, and why not.

Consistency: the scheduler picks a node from a snapshot, then `binder.bind` re-checks the fit in
the binding transaction against the node's current reservations, so a stale snapshot can cost a
retry but never an overcommit.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Any

from shoal.model.meta import get_condition
from shoal.quantity import parse_bytes
from shoal.store.store import Usage

Obj = dict[str, Any]


@dataclass(frozen=True)
class Request:
    cpu: int
    memory: int
    disk: int

    @staticmethod
    def of(vm: Obj) -> "Request":
        spec = vm["spec"]
        return Request(int(spec["cpu"]), parse_bytes(spec["memory"]), parse_bytes(spec["disk"]))


@dataclass(frozen=True)
class Allocatable:
    cpu: int
    memory: int
    disk: int
    vms: int

    @staticmethod
    def of(node: Obj) -> "Allocatable":
        alloc = (node.get("status") or {}).get("allocatable") or {}
        max_vms = (node.get("spec") or {}).get("maxVMs")
        vms = int(alloc.get("vms") or 0)
        if max_vms is not None:
            vms = min(vms, int(max_vms)) if vms else int(max_vms)
        return Allocatable(
            int(alloc.get("cpu") or 0),
            _bytes(alloc.get("memory")),
            _bytes(alloc.get("disk")),
            vms,
        )


def _bytes(value: Any) -> int:
    if value in (None, "", "0", 0):
        return 0
    return parse_bytes(value)


def node_ready(node: Obj) -> bool:
    condition = get_condition(node, "Ready")
    return condition is not None and condition.get("status") == "True"


def why_not(node: Obj, usage: Usage, request: Request) -> str | None:
    """None when the VM fits the node; otherwise the reason, as a short plural-friendly phrase."""
    if node["metadata"].get("deletionTimestamp"):
        return "being deleted"
    if not node_ready(node):
        return "not ready"
    if (node.get("spec") or {}).get("unschedulable"):
        return "cordoned"
    alloc = Allocatable.of(node)
    if usage.vms + 1 > alloc.vms:
        return "at their VM limit"
    if usage.cpu + request.cpu > alloc.cpu:
        return "insufficient cpu"
    if usage.memory + request.memory > alloc.memory:
        return "insufficient memory"
    if alloc.disk and usage.disk + request.disk > alloc.disk:
        return "insufficient disk"
    return None


def unschedulable_message(total: int, reasons: Counter[str]) -> str:
    if total == 0:
        return "0/0 nodes available: no nodes have joined"
    parts = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    return f"0/{total} nodes available: {parts}"
