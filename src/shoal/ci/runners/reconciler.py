"""The runner-pool loop on the controller: one task per RunnerPool, level-triggered. Each sync
asks the CI system what waits and which runners it has, looks at the pool's VMs, applies the
plan (plan.py), and writes the pool's status. A sync runs every syncIntervalSeconds, sooner when
a webhook wakes it, later (backing off to 5 minutes) while the CI system cannot be asked.

Everything it knows is in the store or the CI system, so a controller that restarts, or dies in
the middle of a step, picks up from what it finds: a runner registered whose VM was never made is
removed after two syncs; a VM whose runner is gone is deleted; a runner's Secret whose VM is
gone is deleted.

A pool being deleted holds the finalizer shoal.dev/runnerpool until its VMs, runner Secrets and
CI-side runners are gone.
"""

import asyncio
import base64
import contextlib
import functools
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from shoal.api.objects import Objects
from shoal.api.telemetry import Metrics
from shoal.ci.runners import runnervm
from shoal.ci.runners.plan import (
    Plan,
    PoolSettings,
    RunnerVM,
    plan,
)
from shoal.ci.runners.provider import (
    SUFFIX_LENGTH,
    CiRunner,
    PoolIdentity,
    Provider,
    ProviderError,
    QueuedJob,
)
from shoal.errors import ApiError, NotFound
from shoal.model.kinds import VirtualMachine
from shoal.model.meta import now_iso, parse_iso
from shoal.model.registry import BY_KIND
from shoal.model.runnerpool import RUNNER_POOL_FINALIZER as FINALIZER
from shoal.store import events
from shoal.store.store import Change, Obj, Store

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0
# Runners registered and made at once in one sync (each is a call to the CI system, then two
# writes): enough to fill a large pool quickly, few enough not to flood the CI system.
STARTS_AT_ONCE = 8
# A webhook wakes a sync at most this often: a burst of deliveries makes one sync, not many.
MIN_WAKE_GAP = 1.0
START_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SOURCE = "runnerpool"
# A provider that cannot be asked for these reasons will not clean up later either: a pool
# being deleted lets its CI-side runners go (with a Warning) instead of waiting forever.
HOPELESS = frozenset({"BadCredentials", "NotFound", "Invalid"})

ProviderFactory = Callable[[PoolIdentity, Mapping[str, Any], Mapping[str, bytes]], Provider]


def provider_factory(provider: str) -> ProviderFactory:
    """The from_pool of the CI system's module (shoal.ci.runners.<provider>)."""
    module = importlib.import_module(f"shoal.ci.runners.{provider}")
    factory: ProviderFactory = module.from_pool
    return factory


class TemplateRefused(Exception):
    """The pool's template makes a VM admission refuses."""


@dataclass
class _PoolState:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    provider: Provider | None = None
    provider_key: tuple[Any, ...] = ()
    vm_less: frozenset[str] = frozenset()
    backoff: float = 0.0
    last_problem: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    jobs_waiting: int = 0
    # The jobs queued at the last sync and since when (for the job-wait metric).
    queued: dict[str, float] = field(default_factory=dict)


class RunnerPools:
    def __init__(
        self,
        store: Store,
        objects: Objects,
        providers: Mapping[str, ProviderFactory] | None = None,
        *,
        discover_every: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.objects = objects
        self.providers = providers or {}
        self.discover_every = discover_every
        self._pools: dict[tuple[str, str], _PoolState] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        metrics = metrics or Metrics()
        self.runner_start = metrics.histogram(
            "shoal_runnerpool_runner_start_seconds",
            "From a runner VM's creation to its runner online in the CI system.",
            ["namespace", "pool"],
            START_BUCKETS,
        )
        self.job_wait = metrics.histogram(
            "shoal_runnerpool_job_wait_seconds",
            "From a job queued to a runner taking it (or its cancellation), to within one sync.",
            ["namespace", "pool"],
            START_BUCKETS,
        )

    def metrics(self) -> Iterator[Metric]:
        """The pools' gauges, read at each scrape (the histograms are in the registry)."""
        runners = GaugeMetricFamily(
            "shoal_runnerpool_runners",
            "Runners of each pool by state.",
            labels=["namespace", "pool", "state"],
        )
        waiting = GaugeMetricFamily(
            "shoal_runnerpool_jobs_waiting",
            "Jobs queued in the CI system for each pool.",
            labels=["namespace", "pool"],
        )
        for (namespace, pool), state in sorted(self._pools.items()):
            for runner_state, count in state.counts.items():
                runners.add_metric([namespace, pool, runner_state], count)
            waiting.add_metric([namespace, pool], state.jobs_waiting)
        yield runners
        yield waiting

    def wake(self, namespace: str, name: str) -> None:
        """Sync the pool now (a webhook said something changed); harmless if repeated."""
        state = self._pools.get((namespace, name))
        if state is not None:
            state.wake.set()

    def _on_changes(self, loop: asyncio.AbstractEventLoop, changes: list[Change]) -> None:
        """A runner VM gone frees a slot: its pool syncs now rather than at its interval. Called
        from the writer's thread; a runner VM's name is <pool>-<SUFFIX_LENGTH characters>."""
        for change in changes:
            if change.kind == "VirtualMachine" and change.type == "DELETED":
                key = (change.namespace, change.name[: -SUFFIX_LENGTH - 1])
                if key in self._pools:
                    loop.call_soon_threadsafe(self.wake, *key)

    async def run(self) -> None:
        listener = functools.partial(self._on_changes, asyncio.get_running_loop())
        self.store.add_change_listener(listener)
        try:
            while True:
                try:
                    pools, _ = await asyncio.to_thread(self.store.list_objects, "RunnerPool")
                except Exception:
                    log.exception("listing runner pools failed; retrying")
                    pools = []
                for pool in pools:
                    key = (pool["metadata"]["namespace"], pool["metadata"]["name"])
                    task = self._tasks.get(key)
                    if task is None or task.done():
                        self._pools[key] = _PoolState()
                        self._tasks[key] = asyncio.create_task(
                            self._pool_loop(key), name=f"runnerpool {key[0]}/{key[1]}"
                        )
                await asyncio.sleep(self.discover_every)
        finally:
            self.store.remove_change_listener(listener)
            for task in self._tasks.values():
                task.cancel()
            for task in self._tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for state in self._pools.values():
                if state.provider is not None:
                    with contextlib.suppress(Exception):
                        await state.provider.close()

    async def _pool_loop(self, key: tuple[str, str]) -> None:
        namespace, name = key
        state = self._pools[key]
        while True:
            try:
                pool = await asyncio.to_thread(self.store.get, "RunnerPool", namespace, name)
            except NotFound:  # gone (its finalizer removed by hand): let its HTTP client go
                if state.provider is not None:
                    await state.provider.close()
                    state.provider = None
                return
            interval = float(pool["spec"].get("syncIntervalSeconds") or 30)
            try:
                if pool["metadata"].get("deletionTimestamp"):
                    if await self._tear_down(pool, state):
                        return
                else:
                    await self._sync(pool, state)
                state.backoff = 0.0
            except ProviderError as error:
                state.backoff = min(MAX_BACKOFF, max(interval, state.backoff * 2))
                await self._report_problem(pool, state, error.reason, error.message)
            except TemplateRefused as error:
                state.backoff = min(MAX_BACKOFF, max(interval, state.backoff * 2))
                await self._report_problem(pool, state, "TemplateInvalid", str(error))
            except ApiError as error:  # the pool or a VM changed meanwhile: look again soon
                log.debug("runner pool %s/%s: %s", namespace, name, error)
            except Exception:
                log.exception("runner pool %s/%s failed; retrying", namespace, name)
                state.backoff = min(MAX_BACKOFF, max(interval, state.backoff * 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    state.wake.wait(), state.backoff or _next_sync(state, interval)
                )
            if state.wake.is_set():
                await asyncio.sleep(MIN_WAKE_GAP)  # let a burst of deliveries gather
            state.wake.clear()

    # --- one sync ---

    async def _provider(self, pool: Obj, state: _PoolState) -> Provider:
        namespace = pool["metadata"]["namespace"]
        secret_name = pool["spec"]["credentialsRef"]["name"]
        try:
            secret = await asyncio.to_thread(self.store.get, "Secret", namespace, secret_name)
        except NotFound:
            raise ProviderError(
                "Invalid", f"credentials Secret {secret_name!r} not found in {namespace}"
            ) from None
        key = (pool["metadata"]["generation"], secret["metadata"]["resourceVersion"])
        if state.provider is not None and state.provider_key == key:
            return state.provider
        if state.provider is not None:
            await state.provider.close()
            state.provider = None
        credentials = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        identity = PoolIdentity(namespace, pool["metadata"]["name"])
        provider = pool["spec"]["provider"]
        factory = self.providers.get(provider) or provider_factory(provider)
        state.provider = factory(identity, pool["spec"], credentials)
        state.provider_key = key
        return state.provider

    async def _sync(self, pool: Obj, state: _PoolState) -> None:
        namespace, name = pool["metadata"]["namespace"], pool["metadata"]["name"]
        spec = pool["spec"]
        identity = PoolIdentity(namespace, name)
        provider = await self._provider(pool, state)
        jobs = await provider.queued_jobs()  # before the runners: see plan.py
        runners = await provider.runners()
        secrets = await self._runner_secrets(identity)  # before the VMs: see _sweep_secrets
        vms = await self._vms(identity)
        settings = PoolSettings(
            max_runners=int(spec.get("maxRunners", 10)),
            min_idle=int(spec.get("minIdle", 0)),
            idle_timeout=float(spec.get("idleTimeoutSeconds", 900)),
            registers_ahead=provider.registers_ahead,
            binds_jobs=provider.binds_jobs,
        )
        now = time.time()
        views = [_view(vm, now) for vm in vms]
        views_by_name = {v.name: v for v in views}
        decided = plan(settings, identity, jobs, runners, views, state.vm_less)
        unserved: list[list[str]] = getattr(provider, "unserved", [])
        if unserved:  # GitHub: self-hosted jobs asking for labels no runner of the pool has
            noun = "job asks" if len(unserved) == 1 else "jobs ask"
            said = f"{len(unserved)} queued {noun} for labels this pool's runners lack: " + (
                ", ".join(f"[{', '.join(labels)}]" for labels in unserved[:3])
            )
            decided.message = f"{decided.message}; {said}" if decided.message else said
        state.vm_less = decided.vm_less
        await self._apply(pool, provider, identity, decided, {v.name: v for v in views})
        self._measure(identity, state, jobs, [views_by_name[n] for n in decided.seen_online])
        await self._sweep_secrets(identity, secrets, {vm["metadata"]["name"] for vm in vms})
        started = 0
        gate = asyncio.Semaphore(STARTS_AT_ONCE)

        async def start(job: QueuedJob | None) -> None:
            nonlocal started
            async with gate:
                await self._start_runner(pool, provider, identity, job)
                started += 1

        try:
            outcomes = await asyncio.gather(
                *(start(job) for job in decided.create), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            await self._write_status(pool, decided, started, state)

    async def _vms(self, identity: PoolIdentity) -> list[Obj]:
        vms, _ = await asyncio.to_thread(
            self.store.list_objects, "VirtualMachine", identity.namespace
        )
        return [
            vm
            for vm in vms
            if (vm["metadata"].get("labels") or {}).get(runnervm.POOL_LABEL) == identity.pool
        ]

    async def _apply(
        self,
        pool: Obj,
        provider: Provider,
        identity: PoolIdentity,
        decided: Plan,
        views: dict[str, RunnerVM],
    ) -> None:
        for runner in decided.claim:
            await provider.claimed(runner)
        for vm_name in decided.seen_online:
            await self._annotate(identity, vm_name, runnervm.SEEN_ONLINE)
            await self._event(pool, "RunnerOnline", f"runner of VM {vm_name} is online")
        for vm_name in decided.seen_busy:
            await self._event(pool, "RunnerBusy", f"runner of VM {vm_name} took a job")
        for vm_name in decided.seen_busy:
            await self._annotate(identity, vm_name, runnervm.SEEN_BUSY)
        for runner, why in decided.remove_runners:
            if not await provider.remove(runner):
                continue  # it took a job meanwhile: it ends after that one
            await self._event(pool, "RunnerRemoved", f"runner {runner.name} removed: {why}")
            owner = identity.vm_name(runner.name)
            if owner is not None and owner in views and not views[owner].deleting:
                await self._delete_vm(identity, owner)
        for vm_name, why in decided.delete_vms:
            await self._event(pool, "RunnerVMDeleted", f"VM {vm_name} deleted: {why}")
            await self._delete_vm(identity, vm_name)

    def _measure(
        self,
        identity: PoolIdentity,
        state: _PoolState,
        jobs: list[QueuedJob],
        online: list[RunnerVM],
    ) -> None:
        """Runner start times (creation to first seen online), and how long jobs waited: a job
        that has left the queue since the last sync was taken (or cancelled) by now, so its wait
        is known to within one sync interval."""
        labels = (identity.namespace, identity.pool)
        now = time.time()
        for vm in online:
            self.runner_start.labels(*labels).observe(vm.age)
        current = {job.id: job.queued_at for job in jobs if job.queued_at is not None}
        for job_id, queued_at in state.queued.items():
            if job_id not in current:
                self.job_wait.labels(*labels).observe(max(0.0, now - queued_at))
        state.queued = current

    async def _annotate(self, identity: PoolIdentity, vm_name: str, annotation: str) -> None:
        def change(vm: Obj) -> Obj | None:
            annotations = vm["metadata"].setdefault("annotations", {})
            if annotations.get(annotation) == "true":
                return None
            annotations[annotation] = "true"
            return vm

        with contextlib.suppress(NotFound):
            await asyncio.to_thread(
                self.store.mutate, "VirtualMachine", identity.namespace, vm_name, change
            )

    async def _delete_vm(self, identity: PoolIdentity, vm_name: str) -> None:
        info = BY_KIND["VirtualMachine"]
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.objects.delete, info, identity.namespace, vm_name)
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.store.delete, "Secret", identity.namespace, vm_name)

    async def _runner_secrets(self, identity: PoolIdentity) -> list[Obj]:
        secrets, _ = await asyncio.to_thread(self.store.list_objects, "Secret", identity.namespace)
        return [
            s
            for s in secrets
            if (s["metadata"].get("labels") or {}).get(runnervm.POOL_LABEL) == identity.pool
        ]

    async def _sweep_secrets(
        self, identity: PoolIdentity, secrets: list[Obj], vm_names: set[str]
    ) -> None:
        """Runner Secrets whose VM is gone (it deleted itself, or a crash came between the
        Secret and the VM). secrets must be listed before the VMs named: this loop makes a
        runner's Secret and then its VM, so a Secret listed first whose VM was not there after
        has lost it."""
        for secret in secrets:
            meta = secret["metadata"]
            if meta["name"] not in vm_names:
                with contextlib.suppress(NotFound):
                    await asyncio.to_thread(
                        self.store.delete,
                        "Secret",
                        identity.namespace,
                        meta["name"],
                        expect_uid=meta["uid"],
                    )

    async def _start_runner(
        self, pool: Obj, provider: Provider, identity: PoolIdentity, job: QueuedJob | None
    ) -> None:
        """Register a runner, then its Secret, then its VM: a crash between any two leaves
        something the next syncs remove (see the module's docstring)."""
        spec = pool["spec"]
        vm_name = runnervm.new_vm_name(identity.pool)
        registration = await provider.register(identity.runner_name(vm_name), job)
        command = spec.get("runnerCommand") or provider.default_command
        secret = runnervm.runner_secret(identity, vm_name, registration)
        vm = runnervm.runner_vm(identity, vm_name, spec["template"], command, registration, job)
        try:
            await asyncio.to_thread(self.store.create, secret)
            model = VirtualMachine.model_validate(vm)
            await asyncio.to_thread(
                self.objects.create, BY_KIND["VirtualMachine"], identity.namespace, model
            )
        except ApiError as error:  # nothing half-made stays: the Secret and the runner go
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self.store.delete, "Secret", identity.namespace, vm_name)
            runner = CiRunner(identity.runner_name(vm_name), registration.id, False, False)
            with contextlib.suppress(ProviderError):  # else the next syncs remove it
                await provider.remove(runner)
            raise TemplateRefused(f"the runner VM was refused: {error}") from None
        what = f" for job {job.id}" if job is not None else ""
        await self._event(pool, "RunnerStarted", f"VM {vm_name} started{what}")

    # --- deletion ---

    async def _tear_down(self, pool: Obj, state: _PoolState) -> bool:
        """Delete everything of the pool; True once nothing is left and the finalizer went."""
        identity = PoolIdentity(pool["metadata"]["namespace"], pool["metadata"]["name"])
        vms = await self._vms(identity)
        for vm in vms:
            if not vm["metadata"].get("deletionTimestamp"):
                await self._delete_vm(identity, vm["metadata"]["name"])
        await self._sweep_secrets(identity, await self._runner_secrets(identity), set())
        left = 0
        try:
            provider = await self._provider(pool, state)
            for runner in await provider.runners():
                if not await provider.remove(runner):
                    left += 1
        except ProviderError as error:
            if error.reason not in HOPELESS:
                raise
            await self._event(
                pool,
                "RunnersNotRemoved",
                f"the pool's runners may be left in the CI system: {error.message}",
                warning=True,
            )
        if vms or left:
            return False
        await asyncio.to_thread(
            self.store.mutate,
            "RunnerPool",
            identity.namespace,
            identity.pool,
            _drop_finalizer,
        )
        if state.provider is not None:
            await state.provider.close()
            state.provider = None
        return True

    # --- status ---

    async def _write_status(
        self, pool: Obj, decided: Plan, started: int, state: _PoolState
    ) -> None:
        runners = {
            "starting": decided.starting + started,
            "idle": decided.idle,
            "busy": decided.busy,
            "finishing": decided.finishing,
        }
        waiting_for_node = "waiting for a node" in decided.message
        conditions = [
            _condition("Synced", True, "Synced", "the CI system answered"),
            _condition(
                "AtMaxRunners",
                decided.at_max,
                "AtMaxRunners" if decided.at_max else "BelowMax",
                decided.message if decided.at_max else "",
            ),
            _condition(
                "RunnersScheduled",
                not waiting_for_node,
                "WaitingForNode" if waiting_for_node else "Scheduled",
                decided.message if waiting_for_node else "",
            ),
        ]
        state.last_problem = ""
        state.counts, state.jobs_waiting = runners, decided.jobs_waiting
        status = {
            "runners": runners,
            "jobsWaiting": decided.jobs_waiting,
            "lastSyncTime": now_iso(),
            "message": decided.message,
        }
        await self._set_status(pool, status, conditions)

    async def _report_problem(
        self, pool: Obj, state: _PoolState, reason: str, message: str
    ) -> None:
        log.warning("runner pool %s: %s", pool["metadata"]["name"], message)
        if state.last_problem != message:
            state.last_problem = message
            await self._event(pool, reason, message, warning=True)
        status = {"message": message}
        with contextlib.suppress(NotFound):
            await self._set_status(pool, status, [_condition("Synced", False, reason, message)])

    async def _set_status(
        self, pool: Obj, status: dict[str, Any], conditions: list[dict[str, Any]]
    ) -> None:
        def change(current: Obj) -> Obj | None:
            before = current.get("status") or {}
            merged = {**before, **status}
            merged["conditions"] = _merge_conditions(before.get("conditions") or [], conditions)
            merged["observedGeneration"] = current["metadata"].get("generation", 0)
            if merged == before:
                return None
            current["status"] = merged
            return current

        await asyncio.to_thread(
            self.store.mutate,
            "RunnerPool",
            pool["metadata"]["namespace"],
            pool["metadata"]["name"],
            change,
        )

    async def _event(self, pool: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        await asyncio.to_thread(
            events.record,
            self.store,
            pool,
            reason,
            message,
            type_="Warning" if warning else "Normal",
            source=SOURCE,
        )


def _next_sync(state: _PoolState, interval: float) -> float:
    """Seconds to the next sync: the pool's interval, or the provider's claim interval while a
    runner is starting or idle (a CI system that would give a runner a second job must be told
    not to as soon as it takes its first)."""
    claim = getattr(state.provider, "claim_interval", None)
    waiting = state.counts.get("starting", 0) + state.counts.get("idle", 0)
    if claim and waiting:
        return min(interval, float(claim))
    return interval


def _view(vm: Obj, now: float) -> RunnerVM:
    meta, status = vm["metadata"], vm.get("status") or {}
    annotations = meta.get("annotations") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    script = conditions.get("StartupScript") or {}
    scheduled = conditions.get("Scheduled") or {}
    waiting = (
        str(scheduled.get("message") or "")
        if status.get("phase") == "Pending" and scheduled.get("status") == "False"
        else ""
    )
    return RunnerVM(
        name=meta["name"],
        age=max(0.0, now - parse_iso(meta["creationTimestamp"]).timestamp()),
        deleting=bool(meta.get("deletionTimestamp")),
        done=status.get("phase") in ("Stopped", "Failed", "Stopping")
        or script.get("reason") in ("Succeeded", "Failed"),
        job_id=annotations.get(runnervm.JOB),
        seen_online=annotations.get(runnervm.SEEN_ONLINE) == "true",
        seen_busy=annotations.get(runnervm.SEEN_BUSY) == "true",
        waiting_for_node=waiting,
    )


def _condition(type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }


def _merge_conditions(
    before: list[dict[str, Any]], wanted: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """wanted over before; lastTransitionTime moves only when a condition's status changes."""
    by_type = {c["type"]: c for c in before}
    for condition in wanted:
        old = by_type.get(condition["type"])
        changed = old is None or old.get("status") != condition["status"]
        stamp = now_iso() if changed else (old or {}).get("lastTransitionTime")
        by_type[condition["type"]] = {**condition, "lastTransitionTime": stamp}
    return list(by_type.values())


def _drop_finalizer(pool: Obj) -> Obj | None:
    finalizers = pool["metadata"].get("finalizers") or []
    if FINALIZER not in finalizers:
        return None
    pool["metadata"]["finalizers"] = [f for f in finalizers if f != FINALIZER]
    return pool
