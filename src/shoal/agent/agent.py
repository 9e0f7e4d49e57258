"""The agent: registers its Node, heartbeats, watches the VMs bound to it and reconciles them.

It is an API client like any other: it reads VMs through list+watch (fieldSelector
spec.nodeName=<node>) and writes only their status, its Node's status, Events, and the agent
finalizer it releases once a deleted VM's disk is gone.
"""

import asyncio
import contextlib
import copy
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shoal import __version__
from shoal.agent.identity import FreshIdentities
from shoal.agent.precache import Precacher, Precaches
from shoal.agent.reconcile import (
    PHASE_DURING,
    PHASE_OF,
    Action,
    Desired,
    decide,
    desired_of,
    lost_with_node,
)
from shoal.agent.startup import StartupScripts
from shoal.agent.tunnel import TunnelClient
from shoal.backends.base import Actual, Backend, BackendError, Capacity, SavesState, VMState
from shoal.client import AsyncClient, resource_path
from shoal.errors import AlreadyExists, ApiError, Conflict, Gone, NotFound
from shoal.events import bump, new_event
from shoal.images.errors import InvalidReference
from shoal.images.reference import parse as parse_reference
from shoal.model.kinds import AGENT_FINALIZER
from shoal.model.meta import DNS_NAME, now_iso, set_condition
from shoal.model.warmpool import SAVED_CONDITION, is_saved
from shoal.quantity import format_bytes
from shoal.warmpool import entries

log = logging.getLogger(__name__)
Obj = dict[str, Any]
STATUS_FIELDS = (
    "phase",
    "message",
    "reason",
    "ports",
    "addresses",
    "bootTime",
    "observedGeneration",
    "conditions",
)
CREATE_PROGRESS_INTERVAL = 1.0  # seconds between looks at a long create's progress (a pull)
IMAGE_NAMES_TTL = 60.0  # seconds the Image names of the cached references are reused
# A Node condition: the accelerator the node's guests run under works (message: why it was
# chosen), or stopped working (message: what failed). The scheduler avoids a node where it is False.
ACCELERATOR_CONDITION = "AcceleratorWorks"


@runtime_checkable
class CachesImages(Protocol):
    """A backend with a node image cache (its contents go into the Node's status)."""

    def cached_images(self) -> list[str]:
        """The references of the images the cache holds."""
        ...


def _reference_keys(text: str) -> set[str]:
    """The forms a reference matches in: as written normalized, and by digest."""
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return set()
    return {str(ref), f"{ref.name}@{ref.digest}"} if ref.digest else {str(ref)}


def next_beat(due: float, now: float, interval: float) -> float:
    """When the heartbeat after the one due at `due` is due: on the same cadence, skipping the
    beats missed while that one hung (so the phase stays)."""
    due += interval
    if due < now:
        due += math.ceil((now - due) / interval) * interval
    return due


@dataclass
class AgentSettings:
    node_name: str
    heartbeat_interval: float = 10.0
    resync_interval: float = 10.0
    labels: dict[str, str] = field(default_factory=dict)
    retry_interval: float = 1.0
    tunnels: bool = True  # hold a tunnel channel to the controller (logs, consoles, ports)
    # Where the output of startup scripts is kept (default: a directory under the temp dir).
    logs_dir: Path | None = None


class Agent:
    def __init__(self, client: AsyncClient, backend: Backend, settings: AgentSettings) -> None:
        self.client = client
        self.backend = backend
        self.settings = settings
        self.name = settings.node_name
        self._known: dict[str, Obj] = {}  # uid -> latest VM object seen
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._tunnels: TunnelClient | None = None
        self.registered = asyncio.Event()
        self._ready_since: str | None = None  # when this agent first reported Ready
        self._accelerator: Obj | None = None  # the AcceleratorWorks condition last reported
        self._accelerator_told = "True"  # the status the node's last accelerator Event told
        self._heartbeat_lock = asyncio.Lock()  # the heartbeat loop and the precacher both beat
        # (cached references, when listed, the Images named after them) for the Node's status
        self._image_names: tuple[frozenset[str], float, list[str]] | None = None
        backend.subscribe(self._on_backend_change)
        logs_dir = settings.logs_dir or Path(tempfile.gettempdir()) / f"shoal-{self.name}-startup"
        self.scripts = StartupScripts(client, backend, logs_dir, self._on_backend_change)
        self.identities = FreshIdentities(client, backend, self._on_backend_change)
        # VMs told WarmStarted: if their backend gives up on the restore, they are told again.
        self._resumed: dict[str, bool] = {}
        # Saved entries no VM refers to, seen at the last sweep: removed if still so at the next.
        self._unreferenced: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self._register()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat"),
            asyncio.create_task(self._resync_loop(), name=f"{self.name}-resync"),
        ]
        if isinstance(self.backend, Precaches):
            precacher = Precacher(self.client, self.backend, self.name, self.heartbeat)
            self._tasks.append(asyncio.create_task(precacher.run(), name=f"{self.name}-precache"))
        if self.settings.tunnels:
            self._tunnels = TunnelClient(
                self.client, self.backend, self.name, self.scripts.log_path
            )
            self._tasks.append(asyncio.create_task(self._tunnels.run(), name=f"{self.name}-tunnel"))
        try:
            await self._watch_loop()
        finally:
            for task in [*self._tasks, *self._workers.values()]:
                task.cancel()
            for task in [*self._tasks, *self._workers.values()]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _register(self) -> None:
        while True:
            try:
                with contextlib.suppress(AlreadyExists):
                    await self.client.request(
                        "POST",
                        resource_path("nodes"),
                        body={
                            "metadata": {"name": self.name, "labels": self.settings.labels},
                            "spec": {},
                        },
                    )
                await self.heartbeat()
                self.registered.set()
                return
            except ApiError as error:
                log.warning("node %s: cannot register yet: %s", self.name, error.message)
                await asyncio.sleep(self.settings.retry_interval)

    async def heartbeat(self) -> None:
        async with self._heartbeat_lock:
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        capacity = await self.backend.capacity()
        resources = {
            "cpu": capacity.cpu,
            "memory": format_bytes(capacity.memory),
            "disk": format_bytes(capacity.disk),
            "vms": capacity.vms,
        }
        now = now_iso()
        if self._ready_since is None:
            self._ready_since = now
        conditions = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AgentReady",
                "message": "",
                "lastTransitionTime": self._ready_since,
            }
        ]
        accelerator = self._accelerator_condition(capacity)
        if accelerator is not None:
            conditions.append(accelerator)
        status = {
            "capacity": resources,
            "allocatable": resources,
            "arch": capacity.arch,
            "os": capacity.os,
            "guestOS": list(capacity.guest_os),
            "backend": self.backend.name,
            "accelerator": capacity.accelerator,
            "acceleratorReason": capacity.accelerator_reason[:1024],
            "agentVersion": __version__,
            "warmStart": _warm_start_guest_os(self.backend, capacity),
            "conditions": conditions,
            "lastHeartbeatTime": now,
        }
        if isinstance(self.backend, CachesImages):
            status["cachedImages"] = await self._cached_images(self.backend)
        node = await self.client.patch("nodes", self.name, {"status": status}, sub="status")
        self._accelerator = accelerator
        if accelerator is not None and accelerator["status"] != self._accelerator_told:
            failed = accelerator["status"] == "False"
            told = await self._record(
                node,
                "AcceleratorFailed" if failed else "AcceleratorWorks",
                accelerator["message"]
                if failed
                else f"guests start under {capacity.accelerator} again",
                warning=failed,
            )
            if told:  # else the next heartbeat tells it
                self._accelerator_told = accelerator["status"]

    def _accelerator_condition(self, capacity: Capacity) -> Obj | None:
        if capacity.accelerator is None:
            return None
        failure = capacity.accelerator_failure
        status = "False" if failure else "True"
        previous = self._accelerator
        same = previous is not None and previous["status"] == status
        return {
            "type": ACCELERATOR_CONDITION,
            "status": status,
            "reason": "AcceleratorFailed" if failure else "AcceleratorChosen",
            "message": (failure or capacity.accelerator_reason)[:1024],
            "lastTransitionTime": previous["lastTransitionTime"]
            if same and previous
            else now_iso(),
        }

    async def _cached_images(self, backend: CachesImages) -> list[str]:
        """What the node's image cache holds, as VMs name it: the references, and the Images
        whose source is one of them (the scheduler's image-locality score matches these)."""
        try:
            refs = frozenset(await asyncio.to_thread(backend.cached_images))
        except OSError as error:
            log.warning("node %s: cannot read the image cache: %s", self.name, error)
            return []
        if not refs:
            return []
        known = self._image_names
        if known is None or known[0] != refs or time.monotonic() - known[1] > IMAGE_NAMES_TTL:
            keys = set().union(*(_reference_keys(ref) for ref in refs))
            try:
                listing = await self.client.request("GET", resource_path("images"))
            except ApiError as error:
                log.debug("node %s: cannot list Images: %s", self.name, error.message)
                return sorted(refs)
            names = [
                image["metadata"]["name"]
                for image in listing.get("items") or []
                if _reference_keys(str(((image.get("spec") or {}).get("source") or {}).get("oci")))
                & keys
            ]
            known = self._image_names = (refs, time.monotonic(), names)
        return sorted(refs | set(known[2]))

    async def _heartbeat_loop(self) -> None:
        # On a fixed cadence from a random phase, which spreads the heartbeats of many agents
        # started at once. Not an interval after each answer: agents whose heartbeats a busy
        # controller held up together would then stay in step, and hit it in bursts from then on.
        interval = self.settings.heartbeat_interval
        clock = asyncio.get_running_loop().time
        due = clock() + random.uniform(0, interval)
        while True:
            await asyncio.sleep(max(0.0, due - clock()))
            try:
                await self.heartbeat()
            except ApiError as error:
                log.warning("node %s: heartbeat failed: %s", self.name, error.message)
            due = next_beat(due, clock(), interval)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            for vm in list(self._known.values()):
                self._enqueue(vm)
            try:
                await self._sweep_saved(list(self._known.values()))
            except (BackendError, OSError) as error:
                log.warning("node %s: cannot sweep saved entries: %s", self.name, error)

    async def _sweep_saved(self, vms: list[Obj]) -> None:
        """Remove the saved entries no VM of this node refers to any more (a discarded entry
        whose deletion this agent missed, a claim whose VM was deleted before it was made). An
        entry must be found unreferenced at two sweeps in a row: the VM that claims an entry
        arrives on the watch a moment after the entry's deletion."""
        backend = self.backend
        if not isinstance(backend, SavesState):
            return
        referenced = set(await asyncio.to_thread(backend.saved_entries_in_use))
        for vm in vms:
            meta = vm["metadata"]
            if entries.pool_of(vm) is not None and not meta.get("deletionTimestamp"):
                referenced.add(meta["uid"])
            claimed = (meta.get("annotations") or {}).get(entries.CLAIM_ENTRY_ANNOTATION)
            if claimed:
                referenced.add(claimed)
        held = await asyncio.to_thread(backend.saved_entries)
        for entry in (held - referenced) & self._unreferenced:
            log.info("node %s: removing saved entry %s that no VM refers to", self.name, entry)
            await backend.discard_saved(entry)
        self._unreferenced = held - referenced

    # -- watch -------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.name}"
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    listing = await self.client.request(
                        "GET", resource_path("virtualmachines"), params={"fieldSelector": selector}
                    )
                    rv = listing["metadata"]["resourceVersion"]
                    await self._sync_all(listing["items"])
                async for event in self.client.watch(
                    "virtualmachines", resource_version=rv, fieldSelector=selector
                ):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        await self._forget(obj)
                    else:
                        self._enqueue(obj)
            except Gone:
                rv = None
            except ApiError as error:
                log.info("node %s: watch interrupted (%s); reconnecting", self.name, error.message)
                await asyncio.sleep(self.settings.retry_interval)

    async def _sync_all(self, vms: list[Obj]) -> None:
        """Adopt what the backend runs for us; remove what the controller no longer wants."""
        wanted = {vm["metadata"]["uid"] for vm in vms}
        for state in await self.backend.list():
            if state.id not in wanted:
                log.info("node %s: removing VM %s that is no longer wanted", self.name, state.id)
                await self.backend.delete(state.id)
                await self._end_tunnels(state.id, "the VM was deleted")
        for gone in set(self._known) - wanted:
            self._known.pop(gone, None)
        for vm in vms:
            self._enqueue(vm)
        try:
            await self._sweep_saved(vms)
        except (BackendError, OSError) as error:
            log.warning("node %s: cannot sweep saved entries: %s", self.name, error)

    async def _forget(self, vm: Obj) -> None:
        uid = vm["metadata"]["uid"]
        self._known.pop(uid, None)
        self.scripts.forget(uid)
        self.identities.forget(uid)
        self._resumed.pop(uid, None)
        with contextlib.suppress(BackendError):
            await self.backend.delete(uid)
        await self._end_tunnels(uid, f"VirtualMachine {vm['metadata']['name']} was deleted")

    async def _end_tunnels(self, uid: str, reason: str) -> None:
        if self._tunnels is not None:
            await self._tunnels.end_vm(uid, reason)

    def _on_backend_change(self, vm_id: str) -> None:
        vm = self._known.get(vm_id)
        if vm is not None:
            self._enqueue(vm)

    def _enqueue(self, vm: Obj) -> None:
        uid = vm["metadata"]["uid"]
        self._known[uid] = vm
        if uid in self._workers:
            self._dirty.add(uid)
        else:
            self._workers[uid] = asyncio.create_task(self._work(uid), name=f"reconcile-{uid}")

    async def _work(self, uid: str) -> None:
        try:
            while True:
                self._dirty.discard(uid)
                vm = self._known.get(uid)
                if vm is None:
                    return
                try:
                    await self.reconcile(vm)
                except ApiError as error:
                    log.debug("reconcile %s: %s", vm["metadata"]["name"], error.message)
                except Exception:
                    log.exception("reconcile %s failed", vm["metadata"]["name"])
                if uid not in self._dirty:
                    return
        finally:
            self._workers.pop(uid, None)

    # -- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, vm: Obj) -> None:
        uid = vm["metadata"]["uid"]
        if is_saved(vm):
            await self._keep_saved(vm)
            return
        if await self._saved_unreported(vm):
            await self._mark_saved(vm)  # saved, but the report was lost (a restart, say)
            return
        desired = desired_of(vm)
        one_shot = vm["spec"].get("deleteWhenScriptExits")
        if desired == Desired.RUNNING and one_shot and self.scripts.finished(vm):
            desired = Desired.STOPPED  # its job is done: stopped, the garbage collector deletes it
        state = await self.backend.status(uid)
        if lost_with_node(vm):
            # Failed by the controller while this node was lost: desired Stopped, and no status
            # write, so it stays Failed/NodeLost instead of being restarted by this agent.
            if decide(Desired.STOPPED, state.actual) == Action.STOP:
                await self._act(Action.STOP, uid, vm)
            return
        action = decide(desired, state.actual)
        failure: str | None = None
        if action in PHASE_DURING and desired != Desired.ABSENT:
            vm = await self._write_status(vm, self._status(vm, state, phase=PHASE_DURING[action]))
        try:
            vm = await self._act(action, uid, vm)
        except BackendError as error:
            failure = str(error)
        if action == Action.RELEASE or (action == Action.DELETE and failure is None):
            await self._release(vm)
            return
        state = await self.backend.status(uid)
        if action == Action.CREATE_AND_START and failure is None:
            await self._tell_warm_start(vm, state)
        elif self._resumed.get(uid) and not state.restored:
            await self._tell_warm_start(vm, state)  # the restore was given up on after all
        status = self._status(vm, state)
        if failure is not None and state.actual != Actual.FAILED:  # else the backend says why
            status.update(phase="Failed", reason="BackendError", message=failure)
        vm = await self._write_status(vm, status)
        if self._due_for_saving(vm, state):
            await self._save_entry(vm)
            return
        self.identities.consider(vm, state)
        self.scripts.consider(vm)

    # -- warm pools --------------------------------------------------------------------------

    async def _saved_unreported(self, vm: Obj) -> bool:
        backend = self.backend
        return (
            entries.pool_of(vm) is not None
            and isinstance(backend, SavesState)
            and not vm["metadata"].get("deletionTimestamp")
            and vm["metadata"]["uid"] in await asyncio.to_thread(backend.saved_entries)
        )

    def _due_for_saving(self, vm: Obj, state: VMState) -> bool:
        """An entry whose guest answers: saved now, and never runs as itself again."""
        return (
            entries.pool_of(vm) is not None
            and isinstance(self.backend, SavesState)
            and not vm["metadata"].get("deletionTimestamp")
            and state.actual == Actual.RUNNING
            and state.ready
        )

    async def _save_entry(self, vm: Obj) -> None:
        backend = self.backend
        assert isinstance(backend, SavesState)
        uid = vm["metadata"]["uid"]
        clone = entries.is_clone_golden(vm)
        try:
            await backend.save_state(uid, uid, clone=clone)
        except BackendError as error:
            status = self._status(vm, await self.backend.status(uid))
            status.update(phase="Failed", reason="SaveFailed", message=str(error))
            await self._write_status(vm, status)
            return
        await self._mark_saved(vm)

    async def _mark_saved(self, vm: Obj) -> None:
        """Report the entry saved: phase Saved, condition Saved (it holds disk only from then)."""
        clone = entries.is_clone_golden(vm)
        conditions = copy.deepcopy((vm.get("status") or {}).get("conditions") or [])
        set_condition(conditions, "Ready", "False", "Saved", "saved: it runs as a claiming VM")
        what = "a clone golden" if clone else "an entry"
        message = f"saved as {what} on node {self.name}"
        set_condition(conditions, SAVED_CONDITION, "True", "Saved", message)
        status = {
            "phase": entries.SAVED_PHASE,
            "message": message,
            "reason": "Saved",
            "ports": [],
            "addresses": [],
            "bootTime": None,
            "observedGeneration": int(vm["metadata"].get("generation") or 1),
            "conditions": conditions,
        }
        await self._write_status(vm, status)

    async def _keep_saved(self, vm: Obj) -> None:
        """A saved entry: its files stay until it is deleted; a consumed one's go to the VM
        that claimed it (its create takes them), a discarded one's are removed here."""
        backend = self.backend
        meta = vm["metadata"]
        uid = meta["uid"]
        held = isinstance(backend, SavesState) and uid in await asyncio.to_thread(
            backend.saved_entries
        )
        if meta.get("deletionTimestamp"):
            claimed = entries.CLAIMED_BY_ANNOTATION in (meta.get("annotations") or {})
            if held and not claimed and isinstance(backend, SavesState):
                if await self._golden_in_use(backend, uid):
                    return  # its object, and so its reservation, stay until the last clone goes
                await backend.discard_saved(uid)
            await self._release(vm)
            return
        if not held and (vm.get("status") or {}).get("phase") == entries.SAVED_PHASE:
            status = dict(vm.get("status") or {})
            status.update(
                phase="Failed",
                reason="SavedStateLost",
                message=f"node {self.name} no longer holds the entry's saved state",
            )
            await self._write_status(vm, status)

    async def _golden_in_use(self, backend: SavesState, uid: str) -> bool:
        """Whether a VM on this node maps the golden, or has claimed it and is still to be made
        (the resync loop looks again every resync_interval)."""
        if uid in await asyncio.to_thread(backend.saved_entries_in_use):
            return True
        return any(
            (vm["metadata"].get("annotations") or {}).get(entries.CLAIM_ENTRY_ANNOTATION) == uid
            and not vm["metadata"].get("deletionTimestamp")
            for vm in self._known.values()
        )

    async def _tell_warm_start(self, vm: Obj, state: VMState) -> None:
        """An Event on a VM that claimed a warm-pool entry: resumed, or why it booted cold."""
        annotations = vm["metadata"].get("annotations") or {}
        entry = annotations.get(entries.CLAIM_ENTRY_ANNOTATION)
        if not entry:
            return
        pool = annotations.get(entries.CLAIM_POOL_ANNOTATION, "")
        self._resumed[vm["metadata"]["uid"]] = state.restored
        if state.restored:
            await self._record(
                vm, "WarmStarted", f"resumed a saved entry of warm pool {pool}", warning=False
            )
        else:
            why = state.message or "the node could not use the saved state"
            await self._record(
                vm, "WarmStartFailed", f"booted cold instead of resuming: {why}", warning=True
            )

    async def _image_spec(self, name: str) -> Obj | None:
        """The spec of the Image a VM names (an OCI reference stands for an Image of that
        source); None when there is none by that name."""
        if not DNS_NAME.fullmatch(name):
            return {"source": {"oci": name}}
        try:
            image = await self.client.get("images", name)
        except NotFound:
            return None
        return dict(image.get("spec") or {})

    async def _act(self, action: Action, uid: str, vm: Obj) -> Obj:
        """Do the action; returns the VM as last written (a long create reports progress)."""
        backend = self.backend
        if action in (Action.CREATE, Action.CREATE_AND_START):
            spec = vm["spec"]
            if backend.resolves_images:
                spec = {**spec, "resolvedImage": await self._image_spec(str(spec.get("image")))}
            if isinstance(backend, SavesState):
                spec = {**spec, **_warm_start_keys(vm)}
            vm = await self._create(uid, vm, spec, PHASE_DURING.get(action))
        if action in (Action.CREATE_AND_START, Action.START):
            await backend.start(uid)
        elif action == Action.STOP:
            await backend.stop(uid)
            await self._end_tunnels(uid, f"VirtualMachine {vm['metadata']['name']} was stopped")
        elif action == Action.SUSPEND:
            await backend.suspend(uid)
        elif action == Action.RESUME:
            await backend.resume(uid)
        elif action == Action.DELETE:
            await backend.delete(uid)
            await self._end_tunnels(uid, f"VirtualMachine {vm['metadata']['name']} was deleted")
        return vm

    async def _create(self, uid: str, vm: Obj, spec: Obj, phase: str | None) -> Obj:
        """backend.create; while it runs (an image pull can take minutes), what the backend says
        of the VM (its message: the pull's progress) goes into the VM's status."""
        task = asyncio.ensure_future(self.backend.create(uid, spec))
        try:
            while not (await asyncio.wait({task}, timeout=CREATE_PROGRESS_INTERVAL))[0]:
                state = await self.backend.status(uid)
                if state.actual != Actual.ABSENT and state.message:
                    current = vm.get("status") or {}
                    status = self._status(vm, state, phase=phase or current.get("phase"))
                    with contextlib.suppress(ApiError):  # progress only: the next look retries
                        vm = await self._write_status(vm, status)
        finally:
            task.cancel()  # only if still running: the agent is stopping
        await task
        return vm

    def _status(self, vm: Obj, state: VMState, phase: str | None = None) -> Obj:
        current = vm.get("status") or {}
        conditions = copy.deepcopy(current.get("conditions") or [])
        message = state.message
        if phase is None and state.ready and not self.identities.done(vm):
            # Its guest answers, but it is not itself yet: Starting until its identity is given
            # (so `vm deploy --wait`, `shoal run` and startup scripts come after).
            phase, message = "Starting", message or "giving the VM its own identity"
        ready = state.ready and phase is None
        set_condition(
            conditions,
            "Ready",
            "True" if ready else "False",
            "GuestReachable" if ready else "GuestNotReachable",
            "",
        )
        for kept in (self.identities.condition_of(vm), self.scripts.condition_of(vm)):
            if kept is not None:
                set_condition(
                    conditions, kept["type"], kept["status"], kept["reason"], kept["message"]
                )
        return {
            "phase": phase or PHASE_OF[state.actual],
            "message": message,
            "reason": state.reason,
            "ports": [
                {"guest": guest, "host": host, "address": address}
                for guest, (address, host) in sorted(state.ports.items())
            ],
            "addresses": state.addresses,
            "bootTime": state.boot_time,
            "observedGeneration": int(vm["metadata"].get("generation") or 1),
            "conditions": conditions,
        }

    async def _write_status(self, vm: Obj, status: Obj) -> Obj:
        current = vm.get("status") or {}
        if all(current.get(key) == status.get(key) for key in STATUS_FIELDS):
            return vm
        meta = vm["metadata"]
        updated = await self.client.patch(
            "virtualmachines", meta["name"], {"status": status}, meta["namespace"], sub="status"
        )
        if current.get("phase") != status["phase"]:
            await self._event(updated, status)
        # A newer version (a delete, say) may have arrived on the watch while we awaited: never
        # let this older answer overwrite it, or the change would be lost until the next event.
        known = self._known.get(meta["uid"])
        if (
            updated["metadata"]["uid"] == meta["uid"]
            and known is not None
            and int(known["metadata"]["resourceVersion"])
            <= int(updated["metadata"]["resourceVersion"])
        ):
            self._known[meta["uid"]] = updated
        return updated

    async def _event(self, vm: Obj, status: Obj) -> None:
        phase = status["phase"]
        message = status.get("message") or f"{phase.lower()} on node {self.name}"
        await self._record(vm, phase, message, warning=phase == "Failed")

    async def _record(self, involved: Obj, reason: str, message: str, *, warning: bool) -> bool:
        """An Event about involved (counted, not duplicated, when it repeats); False when it
        could not be stored."""
        event = new_event(
            involved,
            reason,
            message,
            type_="Warning" if warning else "Normal",
            source=f"agent/{self.name}",
        )
        namespace, name = event["metadata"]["namespace"], event["metadata"]["name"]
        try:
            await self.client.request("POST", resource_path("events", namespace), body=event)
        except AlreadyExists:
            try:
                existing = await self.client.request(
                    "GET", resource_path("events", namespace, name)
                )
                await self.client.request(
                    "PUT", resource_path("events", namespace, name), body=bump(existing, event)
                )
            except ApiError:
                return False
        except ApiError as error:
            log.debug("event for %s not recorded: %s", involved["metadata"]["name"], error.message)
            return False
        return True

    async def _release(self, vm: Obj) -> None:
        meta = vm["metadata"]
        self._known.pop(meta["uid"], None)
        self._resumed.pop(meta["uid"], None)
        for _ in range(5):
            finalizers = [f for f in meta.get("finalizers") or [] if f != AGENT_FINALIZER]
            try:
                await self.client.patch(
                    "virtualmachines",
                    meta["name"],
                    {
                        "metadata": {
                            "finalizers": finalizers,
                            "resourceVersion": meta["resourceVersion"],
                        }
                    },
                    meta["namespace"],
                )
                return
            except NotFound:
                return
            except Conflict:
                fresh = await self.client.request(
                    "GET", resource_path("virtualmachines", meta["namespace"], meta["name"])
                )
                if fresh["metadata"]["uid"] != meta["uid"]:
                    return
                meta = fresh["metadata"]


def _warm_start_guest_os(backend: Backend, capacity: Capacity) -> list[str]:
    """The guest OSes whose VMs the backend can save (all it runs, unless it says fewer)."""
    if not isinstance(backend, SavesState):
        return []
    saves = getattr(backend, "warm_start_guest_os", None)
    return [os for os in capacity.guest_os if saves is None or os in saves]


def _warm_start_keys(vm: Obj) -> Obj:
    """What backend.create needs of a VM's warm-pool role: the entry it starts from (claimed),
    or file-backed shared memory (a clone golden, saved once it answers)."""
    annotations = vm["metadata"].get("annotations") or {}
    keys: Obj = {}
    if annotations.get(entries.CLAIM_ENTRY_ANNOTATION):
        keys["savedState"] = annotations[entries.CLAIM_ENTRY_ANNOTATION]
    if entries.pool_of(vm) is not None:
        keys["background"] = True
        if entries.is_clone_golden(vm):
            keys["goldenMemory"] = True
    return keys
