"""The scheduling loop: level-triggered, woken by changes to VMs and nodes.

A pass takes every unbound VM by priority then age. For each it runs the filters over the nodes
(from a rotating start, stopping once enough feasible nodes are found, as Kubernetes does on large
clusters), scores the feasible ones and picks the best. Decisions are bound in batches by
`binder.bind_many`, which re-checks them; a refused one is retried by the next pass. A VM that fits
nowhere gets Scheduled=False with a message saying why, and does not block the VMs behind it.
"""

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from shoal.api.telemetry import Metrics
from shoal.events import new_event
from shoal.model.meta import set_condition
from shoal.scheduler.binder import Decision, add_held, add_request, bind_many
from shoal.scheduler.placement import (
    DEFAULT_HEARTBEAT_GRACE,
    Allocatable,
    Request,
    unschedulable_message,
    why_not,
)
from shoal.scheduler.scores import score
from shoal.store import events
from shoal.store.store import Obj, Store, Tx, Usage
from shoal.store.watch import WatchHub
from shoal.warmpool.claims import ClaimIndex
from shoal.warmpool.entries import claimable

log = logging.getLogger(__name__)
RESYNC_SECONDS = 30.0
GOLDEN_THERE = "already holding a golden of the pool"


@dataclass
class SchedulerSettings:
    default_profile: str = "pack"
    heartbeat_grace: float = DEFAULT_HEARTBEAT_GRACE
    batch: int = 500
    # Stop looking once this many feasible nodes were found (at least), or this share of them.
    min_feasible: int = 20
    feasible_share: float = 0.02


def _node_signature(node: Obj) -> Any:
    status = node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (
        node.get("spec"),
        node["metadata"].get("labels"),
        status.get("allocatable"),
        status.get("cachedImages"),
        ready,
        node["metadata"].get("deletionTimestamp"),
    )


def _priority_then_age(vm: Obj) -> tuple[int, str]:
    return -int(vm["spec"].get("priority") or 0), vm["metadata"]["creationTimestamp"]


class Scheduler:
    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        settings: SchedulerSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.settings = settings or SchedulerSettings()
        self.metrics = metrics
        self._node_signatures: dict[str, Any] = {}
        self._start = 0
        self._again = False
        self.passes = 0

    # -- one pass -----------------------------------------------------------------------------

    def run_once(self) -> int:
        """One scheduling pass; returns how many VMs it bound."""
        self.passes += 1
        self._again = False
        # Most passes (a node changed, a VM went away) find the queue empty: look at it first,
        # without reading every node and VM.
        queued, _ = self.store.list_objects("VirtualMachine", unbound=True)
        if not any(not vm["metadata"].get("deletionTimestamp") for vm in queued):
            return 0
        began = time.perf_counter()
        bound, refused, waiting = self._pass()
        if self.metrics is not None:
            self.metrics.scheduling_seconds.observe(time.perf_counter() - began)
            attempts = self.metrics.scheduling_attempts
            for result, count in (
                ("bound", bound),
                ("refused", refused),
                ("unschedulable", waiting),
            ):
                if count:
                    attempts.labels(result).inc(count)
        return bound

    def _pass(self) -> tuple[int, int, int]:
        """One pass over the unbound VMs: how many were bound, refused by the binder, and left
        waiting (they fit no node now)."""
        vms, _ = self.store.list_objects("VirtualMachine")
        nodes, _ = self.store.list_objects("Node")
        pools, _ = self.store.list_objects("WarmPool")
        usage: dict[str, Usage] = defaultdict(Usage)
        pending = []
        for vm in vms:
            node_name = vm["spec"].get("nodeName")
            if node_name:
                usage[node_name] = add_held(usage[node_name], vm)
            elif not vm["metadata"].get("deletionTimestamp"):
                pending.append(vm)
        pending.sort(key=_priority_then_age)
        allocatable = {n["metadata"]["name"]: Allocatable.of(n) for n in nodes}
        by_name = {n["metadata"]["name"]: n for n in nodes}
        claims = ClaimIndex.of(pools, vms)
        now = time.time()
        decisions: list[Decision] = []
        waiting: list[tuple[Obj, str]] = []
        hopeless: dict[Request, str] = {}  # requests that fit nowhere in this pass
        bound = decided = 0
        for vm in pending:
            request = Request.of(vm)
            if request in hopeless:  # usage only grows within a pass
                waiting.append((vm, hopeless[request]))
                continue
            meta = vm["metadata"]
            pool = claims.pool_for(vm)
            claim = None
            if pool is not None:
                entry = self._best_entry(claims.candidates(pool, vm), by_name, usage, request, now)
                if entry is not None:
                    claim = claims.take(pool, entry)
                    choice: str | None = entry["spec"]["nodeName"]
            if claim is None:
                avoid = claims.golden_nodes(vm)
                choice, message = self._choose(request, nodes, usage, allocatable, now, avoid)
                if choice is None:
                    if avoid is None:
                        hopeless[request] = message
                    waiting.append((vm, message))
                    continue
                if avoid is not None:
                    avoid.add(choice)
            assert choice is not None
            usage[choice] = add_request(usage[choice], request)
            decisions.append(
                Decision(
                    meta["namespace"],
                    meta["name"],
                    meta["resourceVersion"],
                    choice,
                    pool=pool["metadata"]["name"] if pool is not None else None,
                    claim=claim,
                )
            )
            decided += 1
            if len(decisions) >= self.settings.batch:
                bound += self._bind(decisions)
                decisions = []
        bound += self._bind(decisions)
        self._mark_unschedulable(waiting)
        return bound, decided - bound, len(waiting)

    def _best_entry(
        self,
        candidates: list[Obj],
        nodes: dict[str, Obj],
        usage: dict[str, Usage],
        request: Request,
        now: float,
    ) -> Obj | None:
        """Of the entries that can become the VM, the one on the node that passes every filter
        and scores best for it (pack or spread, as for any VM); the oldest saved on a tie."""
        best: Obj | None = None
        best_score = -1.0
        for entry in candidates:
            name = entry["spec"]["nodeName"]
            node = nodes.get(name)
            if node is None or why_not(
                node, usage[name], request, now=now, heartbeat_grace=self.settings.heartbeat_grace
            ):
                continue
            value = score(node, usage[name], request, self.settings.default_profile)
            if value > best_score:
                best, best_score = entry, value
        return best

    def _choose(
        self,
        request: Request,
        nodes: list[Obj],
        usage: dict[str, Usage],
        allocatable: dict[str, Allocatable],
        now: float,
        avoid: set[str] | None = None,
    ) -> tuple[str | None, str]:
        enough = max(self.settings.min_feasible, int(len(nodes) * self.settings.feasible_share))
        reasons: Counter[str] = Counter()
        best: str | None = None
        best_score = -1.0
        feasible = 0
        count = len(nodes)
        start = self._start % count if count else 0
        for offset in range(count):
            node = nodes[(start + offset) % count]
            name = node["metadata"]["name"]
            if avoid and name in avoid:
                reasons[GOLDEN_THERE] += 1
                continue
            reason = why_not(
                node,
                usage[name],
                request,
                now=now,
                heartbeat_grace=self.settings.heartbeat_grace,
                allocatable=allocatable[name],
            )
            if reason is not None:
                reasons[reason] += 1
                continue
            value = score(
                node, usage[name], request, self.settings.default_profile, allocatable[name]
            )
            if value > best_score:
                best, best_score = name, value
            feasible += 1
            if feasible >= enough:
                break
        self._start = start + 1
        return best, "" if best else unschedulable_message(count, reasons)

    def _bind(self, decisions: list[Decision]) -> int:
        if not decisions:
            return 0
        results = bind_many(self.store, decisions)
        refused = [r for r in results if r is not None]
        if refused:
            # The snapshot was stale (another scheduler, a node change): look again at once.
            self._again = True
            log.debug(
                "binder refused %d of %d decisions: %s",
                len(refused),
                len(results),
                Counter(refused),
            )
        return sum(r is None for r in results)

    def _mark_unschedulable(self, waiting: list[tuple[Obj, str]]) -> None:
        todo = [
            (vm, message)
            for vm, message in waiting
            if vm.get("status", {}).get("message") != message
        ]
        if not todo:
            return
        with self.store.tx() as tx:
            for vm, message in todo:
                self._mark_one(tx, vm, message)

    @staticmethod
    def _mark_one(tx: Tx, vm: Obj, message: str) -> None:
        meta = vm["metadata"]
        current = tx.get("VirtualMachine", meta["namespace"], meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return
        if current["spec"].get("nodeName") or current["metadata"].get("deletionTimestamp"):
            return
        status = current.setdefault("status", {})
        changed = set_condition(
            status.setdefault("conditions", []), "Scheduled", "False", "Unschedulable", message
        )
        if status.get("message") != message or status.get("reason") != "Unschedulable":
            status.update(message=message, reason="Unschedulable")
            changed = True
        if not changed:
            return
        tx.replace(current)
        events.upsert(
            tx, new_event(current, "FailedScheduling", message, type_="Warning", source="scheduler")
        )

    # -- triggering -----------------------------------------------------------------------

    def _wants_pass(self, change: Any) -> bool:
        if isinstance(change, int):
            return True
        if change.kind == "VirtualMachine":
            # A VM deleted, or an entry saved (claimable now, and holding no cpu or memory).
            return (
                change.type == "DELETED"
                or not change.object["spec"].get("nodeName")
                or claimable(change.object)
            )
        if change.kind == "WarmPool":
            return True
        if change.kind == "Node":
            signature = None if change.type == "DELETED" else _node_signature(change.object)
            if self._node_signatures.get(change.name) != signature:
                self._node_signatures[change.name] = signature
                return True
        return False

    async def run(self) -> None:
        dirty = asyncio.Event()
        dirty.set()

        async def follow() -> None:
            # The hub's stream can end in an error (the store unreachable while a watcher was
            # behind its rings, a compaction): follow again from now, after a pass, for ever.
            while True:
                try:
                    since = self.hub.last_rv
                    async for change in self.hub.changes(since, heartbeat=RESYNC_SECONDS):
                        if self._wants_pass(change):
                            dirty.set()
                except Exception as error:
                    log.warning("scheduler: following changes failed (%s); again from now", error)
                    await asyncio.sleep(1)
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
                if self._again:
                    dirty.set()
        finally:
            follower.cancel()
