"""Garbage collection: ephemeral VMs once stopped, VMs past their ttl or lease, finalizers of VMs whose node
is gone, old Events, and the change log beyond its retention."""

import contextlib
import logging
import time
from datetime import datetime, timedelta

from shoal.errors import ApiError
from shoal.model.kinds import AGENT_FINALIZER, LEASE_RENEWED
from shoal.model.meta import now_iso, parse_iso
from shoal.store import events
from shoal.store.store import Obj, Store

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(
        self, store: Store, *, event_ttl: float = 3600.0, compact_every: float = 60.0
    ) -> None:
        self.store = store
        self.event_ttl = event_ttl
        self.compact_every = compact_every
        self._last_compact = 0.0

    def run_once(self) -> None:
        vms, _ = self.store.list_objects("VirtualMachine")
        # Only the names of the nodes, and only when a deleted VM waits on one: this runs every
        # few seconds, and parsing a thousand Nodes each time is most of a pass's work.
        waiting = any(
            vm["metadata"].get("deletionTimestamp") and vm["spec"].get("nodeName") for vm in vms
        )
        nodes = self.store.names("Node") if waiting else set()
        now = parse_iso(now_iso())
        for vm in vms:
            try:
                self._collect_vm(vm, nodes, now)
            except ApiError as error:  # changed or gone meanwhile: the next round looks again
                log.debug("gc of %s: %s", vm["metadata"]["name"], error)
        # Old events and the change log are swept once a minute, not every round: listing every
        # Event is the most expensive read the controller makes.
        if time.monotonic() - self._last_compact > self.compact_every:
            self._collect_events(now)
            self.store.compact()
            self._last_compact = time.monotonic()

    def _collect_vm(self, vm: Obj, nodes: set[str], now: datetime) -> None:
        meta, spec = vm["metadata"], vm["spec"]
        namespace, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            if spec.get("nodeName") and spec["nodeName"] not in nodes:
                self.store.mutate("VirtualMachine", namespace, name, _drop_agent_finalizer)
            return
        phase = (vm.get("status") or {}).get("phase")
        if spec.get("ephemeral") and phase in ("Stopped", "Failed"):  # a failed one is done too
            self.store.delete("VirtualMachine", namespace, name, expect_uid=meta["uid"])
            events.record(self.store, vm, "Collected", "ephemeral VM stopped: deleted", source="gc")
            return
        lease = spec.get("leaseSeconds")
        if lease:
            renewed = (meta.get("annotations") or {}).get(LEASE_RENEWED) or meta[
                "creationTimestamp"
            ]
            if parse_iso(renewed) + timedelta(seconds=lease) < now:
                self.store.delete("VirtualMachine", namespace, name, expect_uid=meta["uid"])
                events.record(
                    self.store,
                    vm,
                    "LeaseExpired",
                    f"not renewed for leaseSeconds {lease}: deleted",
                    source="gc",
                )
                return
        ttl = spec.get("ttlSeconds")
        if ttl and parse_iso(meta["creationTimestamp"]) + timedelta(seconds=ttl) < now:
            self.store.delete("VirtualMachine", namespace, name, expect_uid=meta["uid"])
            events.record(
                self.store, vm, "Expired", f"ttlSeconds {ttl} passed: deleted", source="gc"
            )

    def _collect_events(self, now: datetime) -> None:
        cutoff = now - timedelta(seconds=self.event_ttl)
        for event in self.store.list_objects("Event")[0]:
            last = event.get("lastTimestamp")
            if last and parse_iso(last) < cutoff:
                meta = event["metadata"]
                with contextlib.suppress(ApiError):
                    self.store.delete(
                        "Event", meta["namespace"], meta["name"], expect_rv=meta["resourceVersion"]
                    )


def _drop_agent_finalizer(vm: Obj) -> Obj | None:
    finalizers = vm["metadata"].get("finalizers") or []
    if AGENT_FINALIZER not in finalizers:
        return None
    vm["metadata"]["finalizers"] = [f for f in finalizers if f != AGENT_FINALIZER]
    return vm
