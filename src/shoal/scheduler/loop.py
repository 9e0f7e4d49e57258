"""The scheduling loop: level-triggered, woken by changes to VMs and nodes.

A pass takes every unbound VM by priority then age, tries nodes first-fit, and binds through
`binder.bind`; a VM that fits nowhere keeps Scheduled=False with a message saying why, and does not
block the smaller VMs behind it.
"""

import asyncio
import logging
from collections import Counter, defaultdict
from typing import Any

from shoal.model.meta import set_condition
from shoal.scheduler.binder import bind
from shoal.scheduler.placement import Request, unschedulable_message, why_not
from shoal.store import events
from shoal.store.store import Obj, Store, Usage
from shoal.store.watch import WatchHub

log = logging.getLogger(__name__)
RESYNC_SECONDS = 30.0


def _add(usage: Usage, request: Request) -> Usage:
    return Usage(
        usage.cpu + request.cpu,
        usage.memory + request.memory,
        usage.disk + request.disk,
        usage.vms + 1,
    )


def _node_signature(node: Obj) -> Any:
    status = node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (
        node.get("spec"),
        status.get("allocatable"),
        ready,
        node["metadata"].get("deletionTimestamp"),
    )


class Scheduler:
    def __init__(self, store: Store, hub: WatchHub) -> None:
        self.store = store
        self.hub = hub
        self._node_signatures: dict[str, Any] = {}
        self.passes = 0

    def run_once(self) -> int:
        """One scheduling pass; returns how many VMs it bound."""
        self.passes += 1
        vms, _ = self.store.list_objects("VirtualMachine")
        nodes, _ = self.store.list_objects("Node")
        usage: dict[str, Usage] = defaultdict(Usage)
        pending = []
        for vm in vms:
            node_name = vm["spec"].get("nodeName")
            if node_name:
                usage[node_name] = _add(usage[node_name], Request.of(vm))
            elif not vm["metadata"].get("deletionTimestamp"):
                pending.append(vm)
        pending.sort(
            key=lambda vm: (
                -int(vm["spec"].get("priority") or 0),
                vm["metadata"]["creationTimestamp"],
            )
        )
        bound = 0
        for vm in pending:
            if self._place(vm, nodes, usage):
                bound += 1
        return bound

    def _place(self, vm: Obj, nodes: list[Obj], usage: dict[str, Usage]) -> bool:
        request = Request.of(vm)
        meta = vm["metadata"]
        reasons: Counter[str] = Counter()
        for node in nodes:
            node_name = node["metadata"]["name"]
            reason = why_not(node, usage[node_name], request)
            if reason is None:
                reason = bind(
                    self.store, meta["namespace"], meta["name"], meta["resourceVersion"], node_name
                )
                if reason is None:
                    usage[node_name] = _add(usage[node_name], request)
                    events.record(
                        self.store,
                        vm,
                        "Scheduled",
                        f"bound to node {node_name}",
                        source="scheduler",
                    )
                    return True
                if reason == "vm changed":
                    return False  # the next pass sees its new version
            reasons[reason] += 1
        self._mark_unschedulable(vm, unschedulable_message(len(nodes), reasons))
        return False

    def _mark_unschedulable(self, vm: Obj, message: str) -> None:
        meta = vm["metadata"]

        def change(current: Obj) -> Obj | None:
            if current["spec"].get("nodeName") or current["metadata"].get("deletionTimestamp"):
                return None
            status = current.setdefault("status", {})
            changed = set_condition(
                status.setdefault("conditions", []), "Scheduled", "False", "Unschedulable", message
            )
            if status.get("message") != message:
                status["message"] = message
                status["reason"] = "Unschedulable"
                changed = True
            return current if changed else None

        try:
            before = vm.get("status", {}).get("message")
            self.store.mutate("VirtualMachine", meta["namespace"], meta["name"], change)
            if before != message:
                events.record(
                    self.store, vm, "FailedScheduling", message, type_="Warning", source="scheduler"
                )
        except Exception:  # the VM went away meanwhile
            log.debug("could not mark %s unschedulable", meta["name"], exc_info=True)

    def _wants_pass(self, change: Any) -> bool:
        if isinstance(change, int):
            return True
        if change.kind == "VirtualMachine":
            return change.type == "DELETED" or not change.object["spec"].get("nodeName")
        if change.kind == "Node":
            name = change.name
            signature = None if change.type == "DELETED" else _node_signature(change.object)
            if self._node_signatures.get(name) != signature:
                self._node_signatures[name] = signature
                return True
        return False

    async def run(self) -> None:
        dirty = asyncio.Event()
        dirty.set()

        async def follow() -> None:
            async for change in self.hub.changes(self.hub.last_rv, heartbeat=RESYNC_SECONDS):
                if self._wants_pass(change):
                    dirty.set()

        follower = asyncio.create_task(follow(), name="scheduler-follow")
        try:
            while True:
                await dirty.wait()
                dirty.clear()
                try:
                    await asyncio.to_thread(self.run_once)
                except Exception:
                    log.exception("scheduling pass failed; retrying")
                    await asyncio.sleep(1)
                    dirty.set()
        finally:
            follower.cancel()
