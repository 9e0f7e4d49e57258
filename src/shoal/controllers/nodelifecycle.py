"""Node lifecycle: a node that stops heartbeating goes NotReady after the grace; once it has been
NotReady for the eviction timeout, its VMs are failed (restartPolicy Never) or sent back to Pending
to be scheduled elsewhere (OnNodeLost), and VMs being deleted there lose the agent's finalizer.

Level-triggered and safe to run twice. Every write is a compare-and-swap that re-checks its reason
on the fresh object: the NotReady write is skipped when a heartbeat landed after the read, and an
eviction is done in one transaction that re-reads the node, so a node that came back meanwhile
keeps its VMs.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from shoal.errors import ApiError, NotFound
from shoal.model.kinds import AGENT_FINALIZER
from shoal.model.meta import get_condition, parse_iso, set_condition
from shoal.store import events
from shoal.store.store import Obj, Store

log = logging.getLogger(__name__)
SOURCE = "node-lifecycle"
NOT_READY_REASON = "NodeStatusUnknown"
NODE_LOST = "NodeLost"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """The timestamp format of the store (`now_iso`), for an injected clock."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _ready_status(node: Obj) -> str | None:
    condition = get_condition(node, "Ready")
    return None if condition is None else condition.get("status")


def last_heartbeat(node: Obj) -> datetime | None:
    """When the agent last reported: lastHeartbeatTime, else its Ready condition's time."""
    status = node.get("status") or {}
    condition = get_condition(node, "Ready") or {}
    text = status.get("lastHeartbeatTime") or condition.get("lastTransitionTime")
    return parse_iso(text) if text else None


def _set_condition(
    conditions: list[dict[str, str]], type_: str, status: str, reason: str, message: str, at: str
) -> bool:
    """set_condition, with the transition stamped by the loop's clock rather than the wall's."""
    before = next((c.get("status") for c in conditions if c.get("type") == type_), None)
    changed = set_condition(conditions, type_, status, reason, message)
    if changed and before != status:
        for condition in conditions:
            if condition.get("type") == type_:
                condition["lastTransitionTime"] = at
    return changed


def is_stale(
    node: Obj, now: datetime, grace: float, watching_since: datetime | None = None
) -> bool:
    """Ready=True, but no heartbeat for longer than the grace.

    Silence is counted from watching_since at the earliest (when this controller started
    looking): agents cannot heartbeat while the controller is down, so a controller that comes
    back after longer than the grace must not find every node lost.
    """
    heartbeat = last_heartbeat(node)
    if _ready_status(node) != "True" or heartbeat is None:
        return False
    if watching_since is not None:
        heartbeat = max(heartbeat, watching_since)
    return (now - heartbeat).total_seconds() > grace


def mark_not_ready(
    node: Obj, now: datetime, grace: float, watching_since: datetime | None = None
) -> Obj | None:
    """The node with Ready=False, or None when it is not stale (any more: a heartbeat may have
    landed since the caller looked)."""
    heartbeat = last_heartbeat(node)
    if heartbeat is None or not is_stale(node, now, grace, watching_since):
        return None
    silent = int((now - heartbeat).total_seconds())
    message = f"no heartbeat for {silent}s (grace {_seconds(grace)}): the agent is down or cut off"
    conditions = node.setdefault("status", {}).setdefault("conditions", [])
    _set_condition(conditions, "Ready", "False", NOT_READY_REASON, message, iso(now))
    return node


def lost_since(node: Obj, now: datetime, timeout: float) -> datetime | None:
    """When a node went NotReady, if that was more than the eviction timeout ago; else None."""
    condition = get_condition(node, "Ready")
    if (
        condition is None
        or condition.get("status") == "True"
        or node["metadata"].get("deletionTimestamp")
    ):
        return None
    since = condition.get("lastTransitionTime")
    if not since or (now - parse_iso(since)).total_seconds() < timeout:
        return None
    return parse_iso(since)


def evict(vm: Obj, node_name: str, message: str, now: datetime) -> tuple[Obj, str] | None:
    """The VM after its node was lost, and the event message; None when nothing is left to do."""
    meta, spec = vm["metadata"], vm["spec"]
    if spec.get("nodeName") != node_name:
        return None  # moved or unbound meanwhile
    finalizers = meta.get("finalizers") or []
    if meta.get("deletionTimestamp"):
        if AGENT_FINALIZER not in finalizers:
            return None
        meta["finalizers"] = [f for f in finalizers if f != AGENT_FINALIZER]
        return vm, f"{message}: released the agent's finalizer so the deletion completes"
    status = vm.setdefault("status", {})
    conditions = status.setdefault("conditions", [])
    at = iso(now)
    if spec.get("restartPolicy") == "OnNodeLost":
        spec["nodeName"] = None
        meta["finalizers"] = [f for f in finalizers if f != AGENT_FINALIZER]
        status.update(
            phase="Pending",
            reason="",
            message=f"rescheduling: node {node_name} was lost",
            addresses=[],
            ports=[],
            bootTime=None,
            scheduledTime=None,
            restartCount=int(status.get("restartCount") or 0) + 1,
        )
        _set_condition(conditions, "Scheduled", "False", NODE_LOST, status["message"], at)
        _set_condition(conditions, "Ready", "False", NODE_LOST, status["message"], at)
        return vm, f"{message}: back to Pending to be scheduled again"
    if status.get("phase") == "Failed" and status.get("reason") == NODE_LOST:
        return None
    status.update(phase="Failed", reason=NODE_LOST, message=message)
    _set_condition(conditions, "Ready", "False", NODE_LOST, message, at)
    return vm, f"{message}: restartPolicy Never, so it failed"


class NodeLifecycle:
    def __init__(
        self,
        store: Store,
        *,
        grace: float = 40.0,
        eviction_timeout: float = 300.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.grace = grace
        self.eviction_timeout = eviction_timeout
        self.clock = clock
        self._not_ready: set[str] = set()  # nodes last seen NotReady, to report recoveries
        self.watching_since: datetime | None = None  # the first round's time

    def run_once(self, now: datetime | None = None) -> None:
        now = now or self.clock()
        if self.watching_since is None:
            self.watching_since = now
        # Only a node silent for longer than the grace can need anything done (the store keeps
        # each node's last heartbeat in a column), and of the others only those last seen
        # NotReady, to report that they are back: a thousand heartbeating nodes are not read.
        cutoff = (now - timedelta(seconds=self.grace)).timestamp()
        nodes, _ = self.store.list_objects("Node", heartbeat_before=cutoff)
        silent = {node["metadata"]["name"] for node in nodes}
        for name in sorted(self._not_ready - silent):
            try:
                nodes.append(self.store.get("Node", "", name))
            except NotFound:
                self._not_ready.discard(name)
        for node in nodes:
            try:
                self._reconcile(node, now)
            except ApiError as error:  # changed or gone meanwhile: the next round looks again
                log.debug("node lifecycle of %s: %s", node["metadata"]["name"], error)

    def _reconcile(self, node: Obj, now: datetime) -> None:
        name = node["metadata"]["name"]
        ready = _ready_status(node)
        if ready is None:
            return  # registered, never heartbeated: nothing to judge yet
        if ready == "True":
            if name in self._not_ready:
                events.record(self.store, node, "NodeReady", "heartbeats resumed", source=SOURCE)
                self._not_ready.discard(name)
            if is_stale(node, now, self.grace, self.watching_since):
                self._mark_not_ready(node, now)
            return
        self._not_ready.add(name)
        if lost_since(node, now, self.eviction_timeout) is not None:
            self._evict_all(node, now)

    def _mark_not_ready(self, node: Obj, now: datetime) -> None:
        name = node["metadata"]["name"]
        written = self.store.mutate(
            "Node", "", name, lambda n: mark_not_ready(n, now, self.grace, self.watching_since)
        )
        if written["metadata"]["resourceVersion"] == node["metadata"]["resourceVersion"]:
            return
        if _ready_status(written) != "False":
            return  # a heartbeat landed first: nothing was written by us
        self._not_ready.add(name)
        condition = get_condition(written, "Ready") or {}
        log.warning("node %s is not ready: %s", name, condition.get("message"))
        events.record(
            self.store,
            written,
            "NodeNotReady",
            condition.get("message") or "no heartbeat",
            type_="Warning",
            source=SOURCE,
        )

    def _evict_all(self, node: Obj, now: datetime) -> None:
        name = node["metadata"]["name"]
        heartbeat = last_heartbeat(node)
        since = iso(heartbeat) if heartbeat else "its registration"
        message = f"node {name} was lost (no heartbeat since {since})"
        vms, _ = self.store.list_objects("VirtualMachine", node_name=name)
        for vm in vms:
            meta = vm["metadata"]
            try:
                self._evict_one(name, meta["namespace"], meta["name"], message, now)
            except ApiError as error:
                log.debug("evicting %s from %s: %s", meta["name"], name, error)

    def _evict_one(
        self, node_name: str, namespace: str, name: str, message: str, now: datetime
    ) -> None:
        # One transaction that re-reads the node (locking its row on PostgreSQL, as the binder
        # does) and the VM: a node that heartbeated again since the listing keeps its VMs.
        with self.store.tx() as tx:
            node = tx.get("Node", "", node_name)
            if node is None or lost_since(node, now, self.eviction_timeout) is None:
                return
            vm = tx.get("VirtualMachine", namespace, name)
            if vm is None:
                return
            result = evict(vm, node_name, message, now)
            if result is None:
                return
            updated, note = result
            written = tx.replace(updated)
        log.info("%s/%s: %s", namespace, name, note)
        events.record(self.store, written, NODE_LOST, note, type_="Warning", source=SOURCE)
