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


def _record_scheduled(tx: Tx, vm: Obj, node_name: str) -> None:
    event = new_event(vm, "Scheduled", f"bound to node {node_name}", source="scheduler")
    meta = event["metadata"]
    existing = tx.get("Event", meta["namespace"], meta["name"])
    if existing is None:
        tx.insert(event)
    else:
        tx.replace(bump(existing, event))


def _bind_one(tx: Tx, decision: Decision, node: Obj, usage: Usage) -> tuple[str | None, Usage]:
    vm = tx.get("VirtualMachine", decision.namespace, decision.name)
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
    tx.replace(vm)
    _record_scheduled(tx, vm, decision.node_name)
    return None, add_request(usage, request)


def bind_many(store: Store, decisions: list[Decision]) -> list[str | None]:
    """Bind each VM to its node; per decision None on success, else why not."""
    results: list[str | None] = [None] * len(decisions)
    by_node: dict[str, list[int]] = defaultdict(list)
    for index, decision in enumerate(decisions):
        by_node[decision.node_name].append(index)
    with store.tx() as tx:
        for node_name in sorted(by_node):
            node = tx.get("Node", "", node_name)  # locks the row: binds to it are serialized
            if node is None:
                for index in by_node[node_name]:
                    results[index] = "node gone"
                continue
            usage = tx.node_usage(node_name)
            for index in by_node[node_name]:
                results[index], usage = _bind_one(tx, decisions[index], node, usage)
    return results


def bind(store: Store, namespace: str, name: str, expect_rv: str, node_name: str) -> str | None:
    """Bind one VM to one node; None on success, else why not."""
    return bind_many(store, [Decision(namespace, name, expect_rv, node_name)])[0]
