"""Placement: what a VM asks of a node, the filters a node must pass, and why one does not.

Filters are small pure functions run cheapest first; the first that fails names the reason, as a
phrase that reads after a count ("3 insufficient memory"). Consistency: the scheduler decides from
a snapshot, and `binder.bind_many` re-checks the resource filters inside the binding transaction
against the node's current reservations, so a stale snapshot can cost a retry, never an overcommit.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from shoal.model.meta import get_condition, parse_iso
from shoal.model.warmpool import POOL_LABEL as WARM_POOL_LABEL
from shoal.quantity import parse_bytes
from shoal.store.store import Usage

Obj = dict[str, Any]
DEFAULT_HEARTBEAT_GRACE = 40.0


@dataclass(frozen=True)
class Request:
    """What a VM asks of the node it runs on."""

    cpu: int
    memory: int
    disk: int
    namespace: str = "default"
    arch: str = "amd64"
    os: str = "linux"
    node_selector: tuple[tuple[str, str], ...] = ()
    preferred: tuple[tuple[str, str], ...] = ()
    image: str = ""
    profile: str | None = None
    warm_pool_entry: bool = False

    @staticmethod
    def of(vm: Obj) -> "Request":
        spec = vm["spec"]
        labels = vm["metadata"].get("labels") or {}
        return Request(
            int(spec["cpu"]),
            parse_bytes(spec["memory"]),
            parse_bytes(spec["disk"]),
            namespace=vm["metadata"].get("namespace") or "default",
            arch=spec.get("arch") or "amd64",
            os=spec.get("os") or "linux",
            node_selector=tuple(sorted((spec.get("nodeSelector") or {}).items())),
            preferred=tuple(sorted((spec.get("preferredNodeSelector") or {}).items())),
            image=spec.get("image") or "",
            profile=spec.get("schedulingProfile"),
            warm_pool_entry=WARM_POOL_LABEL in labels,
        )


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


@dataclass(frozen=True)
class Situation:
    """Everything a filter may look at, besides the node and the request."""

    usage: Usage
    now: float | None = None  # seconds since the epoch; None skips the heartbeat check
    heartbeat_grace: float = DEFAULT_HEARTBEAT_GRACE
    allocatable: Allocatable | None = field(default=None)


Filter = Callable[[Obj, Request, Situation], str | None]


def node_ready(node: Obj) -> bool:
    condition = get_condition(node, "Ready")
    return condition is not None and condition.get("status") == "True"


def _status(node: Obj) -> Obj:
    return node.get("status") or {}


def _spec(node: Obj) -> Obj:
    return node.get("spec") or {}


def not_deleting(node: Obj, _r: Request, _s: Situation) -> str | None:
    return "being deleted" if node["metadata"].get("deletionTimestamp") else None


def ready(node: Obj, _r: Request, _s: Situation) -> str | None:
    return None if node_ready(node) else "not ready"


def accelerator_works(node: Obj, _r: Request, _s: Situation) -> str | None:
    """A node whose guests no longer start under its accelerator says so (AcceleratorWorks)."""
    condition = get_condition(node, "AcceleratorWorks")
    return "accelerator failing" if condition and condition.get("status") == "False" else None


def schedulable(node: Obj, _r: Request, _s: Situation) -> str | None:
    return "cordoned" if _spec(node).get("unschedulable") else None


@lru_cache(maxsize=65536)
def _epoch(timestamp: str) -> float:
    """Seconds since the epoch of an API timestamp; cached, as a pass asks once per VM and node."""
    return parse_iso(timestamp).timestamp()


def heartbeat_fresh(node: Obj, _r: Request, situation: Situation) -> str | None:
    if situation.now is None:
        return None
    beat = _status(node).get("lastHeartbeatTime")
    if not beat or situation.now - _epoch(beat) > situation.heartbeat_grace:
        return "not heartbeating"
    return None


def arch_matches(node: Obj, request: Request, _s: Situation) -> str | None:
    arch = _status(node).get("arch")
    return None if arch in (None, request.arch) else f"not {request.arch}"


def runs_guest_os(node: Obj, request: Request, _s: Situation) -> str | None:
    guests = _status(node).get("guestOS") or ["linux"]
    return None if request.os in guests else f"cannot run {request.os} guests"


def dedication(node: Obj, request: Request, _s: Situation) -> str | None:
    dedicated = _spec(node).get("dedicatedNamespaces") or []
    return (
        "dedicated to other namespaces"
        if dedicated and request.namespace not in dedicated
        else None
    )


def required_tags(node: Obj, request: Request, _s: Situation) -> str | None:
    labels = node["metadata"].get("labels") or {}
    for key, value in request.node_selector:
        if labels.get(key) != value:
            return f"missing tag {key}={value}" if value else f"missing tag {key}"
    return None


def keeps_warm_pool_entries(node: Obj, request: Request, _s: Situation) -> str | None:
    if request.warm_pool_entry and request.os not in (_status(node).get("warmStart") or []):
        return f"cannot keep warm-pool entries of {request.os} guests"
    return None


def vm_slots(node: Obj, _r: Request, situation: Situation) -> str | None:
    alloc = situation.allocatable or Allocatable.of(node)
    return "at their VM limit" if situation.usage.vms + 1 > alloc.vms else None


def macos_licence(node: Obj, request: Request, situation: Situation) -> str | None:
    if request.os != "macos":
        return None
    limit = int(_spec(node).get("maxMacOSVMs", 2))
    return "at their macOS guest limit" if situation.usage.macos + 1 > limit else None


def cpu(node: Obj, request: Request, situation: Situation) -> str | None:
    alloc = situation.allocatable or Allocatable.of(node)
    return "insufficient cpu" if situation.usage.cpu + request.cpu > alloc.cpu else None


def memory(node: Obj, request: Request, situation: Situation) -> str | None:
    alloc = situation.allocatable or Allocatable.of(node)
    return "insufficient memory" if situation.usage.memory + request.memory > alloc.memory else None


def disk(node: Obj, request: Request, situation: Situation) -> str | None:
    alloc = situation.allocatable or Allocatable.of(node)
    if alloc.disk and situation.usage.disk + request.disk > alloc.disk:
        return "insufficient disk"
    return None


# Cheapest first: flags and conditions, then the node's traits, then the sums.
FILTERS: tuple[Filter, ...] = (
    not_deleting,
    ready,
    schedulable,
    accelerator_works,
    heartbeat_fresh,
    arch_matches,
    runs_guest_os,
    keeps_warm_pool_entries,
    dedication,
    required_tags,
    vm_slots,
    macos_licence,
    cpu,
    memory,
    disk,
)
# The filters whose answer depends on what is bound to the node: the binder re-checks these.
RESOURCE_FILTERS: tuple[Filter, ...] = (vm_slots, macos_licence, cpu, memory, disk)


def why_not(
    node: Obj,
    usage: Usage,
    request: Request,
    *,
    now: float | None = None,
    heartbeat_grace: float = DEFAULT_HEARTBEAT_GRACE,
    filters: tuple[Filter, ...] = FILTERS,
    allocatable: Allocatable | None = None,
) -> str | None:
    """None when the VM fits the node; otherwise the first reason it does not."""
    situation = Situation(usage, now, heartbeat_grace, allocatable or Allocatable.of(node))
    for check in filters:
        reason = check(node, request, situation)
        if reason is not None:
            return reason
    return None


def could_ever_fit(node: Obj, request: Request) -> bool:
    """Whether the node could hold the VM were it empty (size only)."""
    return why_not(node, Usage(), request, filters=(cpu, memory, disk)) is None


def unschedulable_message(total: int, reasons: Counter[str]) -> str:
    if total == 0:
        return "0/0 nodes available: no nodes have joined"
    parts = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    return f"0/{total} nodes available: {parts}"
