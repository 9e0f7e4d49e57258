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
from shoal.scheduler.placement import (
    RESOURCE_FILTERS,
    Request,
    not_deleting,
    ready,
    schedulable,
    why_not,
)
from shoal.store.store import Obj, Store, Tx, Usage

RECHECK = (not_deleting, ready, schedulable, *RESOURCE_FILTERS)
VM_CHANGED = "vm changed"


@dataclass(frozen=True)
class Decision:
    namespace: str
    name: str
    resource_version: str
    node_name: str


def add_request(usage: Usage, request: Request) -> Usage:
    return replace(
        usage,
        cpu=usage.cpu + request.cpu,
        memory=usage.memory + request.memory,
        disk=usage.disk + request.disk,
        vms=usage.vms + 1,
        macos=usage.macos + (request.os == "macos"),
    )


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
    status = vm.setdefault("status", {})
    status.update(phase="Scheduled", scheduledTime=now_iso(), message="", reason="")
    set_condition(
        status.setdefault("conditions", []),
        "Scheduled",
        "True",
        "Scheduled",
        f"bound to {decision.node_name}",
    )
    return None, add_request(usage, request)


def _record_scheduled(tx: Tx, bound: list[Obj]) -> None:
    """One Scheduled event per bound VM, written with the bind."""
    fresh = [
        new_event(vm, "Scheduled", f"bound to node {vm['spec']['nodeName']}", source="scheduler")
        for vm in bound
    ]
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
        bound: list[Obj] = []
        for name in names:
            node = nodes.get(("", name))
            usage = usages[name]
            for index in by_node[name]:
                if node is None:
                    results[index] = "node gone"
                    continue
                decision = decisions[index]
                vm = vms.get((decision.namespace, decision.name))
                results[index], usage = _bind_one(decision, vm, node, usage)
                if results[index] is None and vm is not None:
                    bound.append(vm)
        tx.replace_many(bound)
        _record_scheduled(tx, bound)
    return results


def bind(store: Store, namespace: str, name: str, expect_rv: str, node_name: str) -> str | None:
    """Bind one VM to one node; None on success, else why not."""
    return bind_many(store, [Decision(namespace, name, expect_rv, node_name)])[0]
