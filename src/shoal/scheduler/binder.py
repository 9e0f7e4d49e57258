"""Binding VMs to nodes in one transaction that re-checks each node's reservations.

The transaction locks every node it binds to (in name order, so two schedulers never deadlock),
reads what is already bound to each, and compare-and-swaps each VM. A decision made from a stale
snapshot is refused here and retried by the next pass; none can overcommit a node.
"""

from collections import defaultdict
from dataclasses import dataclass, replace

from shoal.events import bump, new_event
from shoal.model.kinds import AGENT_FINALIZER
from shoal.model.meta import now_iso, set_condition
from shoal.model.warmpool import is_saved
from shoal.scheduler.placement import (
    RESOURCE_FILTERS,
    Request,
    not_deleting,
    ready,
    schedulable,
    why_not,
)
from shoal.store.store import Obj, Store, Tx, Usage
from shoal.warmpool import entries

RECHECK = (not_deleting, ready, schedulable, *RESOURCE_FILTERS)
VM_CHANGED = "vm changed"
ENTRY_TAKEN = "warm-pool entry taken"


@dataclass(frozen=True)
class Claim:
    """A warm-pool entry a VM is to start from: consumed (suspended mode) or shared (a clone
    golden, which stays)."""

    pool: str
    entry_name: str
    entry_uid: str
    resource_version: str
    consume: bool


@dataclass(frozen=True)
class Decision:
    namespace: str
    name: str
    resource_version: str
    node_name: str
    # For a VM of a pooled VMConfig: its pool, and the entry it takes (None: it boots cold).
    pool: str | None = None
    claim: Claim | None = None


def add_request(usage: Usage, request: Request) -> Usage:
    return replace(
        usage,
        cpu=usage.cpu + request.cpu,
        memory=usage.memory + request.memory,
        disk=usage.disk + request.disk,
        vms=usage.vms + 1,
        macos=usage.macos + (request.os == "macos"),
    )


def add_held(usage: Usage, vm: Obj) -> Usage:
    """usage plus what a bound VM holds: its request, or for a saved warm-pool entry disk only,
    as much as its disk and its saved memory may take (as Tx.node_usages counts)."""
    request = Request.of(vm)
    if is_saved(vm):
        return replace(usage, disk=usage.disk + request.disk + request.memory)
    return add_request(usage, request)


def _bind_one(
    decision: Decision, vm: Obj | None, node: Obj, usage: Usage
) -> tuple[str | None, Usage]:
    """Check one decision against the node's current reservations and update the VM in place."""
    if vm is None or vm["metadata"]["resourceVersion"] != decision.resource_version:
        return VM_CHANGED, usage
    if vm["spec"].get("nodeName") or vm["metadata"].get("deletionTimestamp"):
        return VM_CHANGED, usage
    request = Request.of(vm)
    reason = why_not(node, usage, request, filters=RECHECK)
    if reason is not None:
        return reason, usage
    vm["spec"]["nodeName"] = decision.node_name
    finalizers = vm["metadata"].setdefault("finalizers", [])
    if AGENT_FINALIZER not in finalizers:
        finalizers.append(AGENT_FINALIZER)
    annotations = vm["metadata"].setdefault("annotations", {})
    annotations.pop(entries.CLAIM_POOL_ANNOTATION, None)  # of an earlier placement, if any
    annotations.pop(entries.CLAIM_ENTRY_ANNOTATION, None)
    if decision.pool is not None:
        annotations[entries.CLAIM_POOL_ANNOTATION] = decision.pool
        if decision.claim is not None:
            annotations[entries.CLAIM_ENTRY_ANNOTATION] = decision.claim.entry_uid
    status = vm.setdefault("status", {})
    # A VM placed again (restartPolicy OnNodeLost) is given its identity again.
    status["conditions"] = [
        c for c in status.get("conditions") or [] if c.get("type") != entries.IDENTITY_CONDITION
    ]
    status.update(phase="Scheduled", scheduledTime=now_iso(), message="", reason="")
    set_condition(
        status.setdefault("conditions", []),
        "Scheduled",
        "True",
        "Scheduled",
        f"bound to {decision.node_name}",
    )
    return None, add_request(usage, request)


def _take_entry(decision: Decision, entry: Obj | None, vm_uid: str) -> str | None:
    """Check the claimed entry is still there for the VM, and consume it (in place) unless it
    is a golden; None on success, else why not."""
    claim = decision.claim
    assert claim is not None
    if (
        entry is None
        or entry["metadata"]["uid"] != claim.entry_uid
        or entry["metadata"]["resourceVersion"] != claim.resource_version
        or not entries.claimable(entry)
        or entry["spec"].get("nodeName") != decision.node_name
    ):
        return ENTRY_TAKEN
    if claim.consume:
        meta = entry["metadata"]
        meta["deletionTimestamp"] = now_iso()
        meta.setdefault("annotations", {})[entries.CLAIMED_BY_ANNOTATION] = vm_uid
        entry.setdefault("status", {})["phase"] = "Terminating"
    return None


def _scheduled_message(vm: Obj) -> str:
    node = vm["spec"]["nodeName"]
    annotations = vm["metadata"].get("annotations") or {}
    pool = annotations.get(entries.CLAIM_POOL_ANNOTATION)
    if pool is None:
        return f"bound to node {node}"
    if entries.CLAIM_ENTRY_ANNOTATION in annotations:
        return f"bound to node {node}, resuming an entry of warm pool {pool}"
    return f"bound to node {node}, booting cold: warm pool {pool} has no ready entry that fits"


def _record_scheduled(tx: Tx, bound: list[Obj]) -> None:
    """One Scheduled event per bound VM, written with the bind."""
    fresh = [new_event(vm, "Scheduled", _scheduled_message(vm), source="scheduler") for vm in bound]
    keys = [(e["metadata"]["namespace"], e["metadata"]["name"]) for e in fresh]
    existing = tx.get_many("Event", keys)
    tx.insert_many([e for e, key in zip(fresh, keys, strict=True) if key not in existing])
    tx.replace_many(
        [bump(existing[key], e) for e, key in zip(fresh, keys, strict=True) if key in existing]
    )


def bind_many(store: Store, decisions: list[Decision]) -> list[str | None]:
    """Bind each VM to its node; per decision None on success, else why not.

    A handful of statements whatever the batch size: the nodes (locked), what is bound to them,
    the VMs, then the updates and their events.
    """
    results: list[str | None] = [None] * len(decisions)
    by_node: dict[str, list[int]] = defaultdict(list)
    for index, decision in enumerate(decisions):
        by_node[decision.node_name].append(index)
    names = sorted(by_node)
    with store.tx() as tx:
        nodes = tx.get_many("Node", [("", name) for name in names])
        usages = tx.node_usages(names)
        vms = tx.get_many("VirtualMachine", [(d.namespace, d.name) for d in decisions])
        claimed = tx.get_many(
            "VirtualMachine",
            [(d.namespace, d.claim.entry_name) for d in decisions if d.claim is not None],
        )
        bound: list[Obj] = []
        consumed: list[Obj] = []
        for name in names:
            node = nodes.get(("", name))
            usage = usages[name]
            for index in by_node[name]:
                if node is None:
                    results[index] = "node gone"
                    continue
                decision = decisions[index]
                vm = vms.get((decision.namespace, decision.name))
                entry = None
                if decision.claim is not None and vm is not None:
                    entry = claimed.get((decision.namespace, decision.claim.entry_name))
                    results[index] = _take_entry(decision, entry, vm["metadata"]["uid"])
                    if results[index] is not None:
                        continue
                results[index], usage = _bind_one(decision, vm, node, usage)
                if results[index] is None and vm is not None:
                    bound.append(vm)
                    if decision.claim is not None and decision.claim.consume:
                        assert entry is not None
                        consumed.append(entry)
        tx.replace_many(bound + consumed)
        _record_scheduled(tx, bound)
    return results


def bind(store: Store, namespace: str, name: str, expect_rv: str, node_name: str) -> str | None:
    """Bind one VM to one node; None on success, else why not."""
    return bind_many(store, [Decision(namespace, name, expect_rv, node_name)])[0]
