"""Binding a VM to a node in one transaction that re-checks the node's reservations."""

from shoal.model.kinds import AGENT_FINALIZER
from shoal.model.meta import now_iso, set_condition
from shoal.scheduler.placement import Request, why_not
from shoal.store.store import Store


def bind(store: Store, namespace: str, name: str, expect_rv: str, node_name: str) -> str | None:
    """Bind the VM to the node; None on success, else why not (the caller tries elsewhere)."""
    with store.tx() as tx:
        node = tx.get("Node", "", node_name)  # locks the node row: binds to it are serialized
        if node is None:
            return "node gone"
        vm = tx.get("VirtualMachine", namespace, name)
        if vm is None or vm["metadata"]["resourceVersion"] != expect_rv:
            return "vm changed"
        if vm["spec"].get("nodeName") or vm["metadata"].get("deletionTimestamp"):
            return "vm changed"
        reason = why_not(node, tx.node_usage(node_name), Request.of(vm))
        if reason is not None:
            return reason
        vm["spec"]["nodeName"] = node_name
        finalizers = vm["metadata"].setdefault("finalizers", [])
        if AGENT_FINALIZER not in finalizers:
            finalizers.append(AGENT_FINALIZER)
        status = vm.setdefault("status", {})
        status["phase"] = "Scheduled"
        status["scheduledTime"] = now_iso()
        status["message"] = ""
        status["reason"] = ""
        set_condition(
            status.setdefault("conditions", []),
            "Scheduled",
            "True",
            "Scheduled",
            f"bound to {node_name}",
        )
        tx.replace(vm)
    return None
