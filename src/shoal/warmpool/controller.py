"""The warm-pool loop on the controller: keeps each WarmPool at `size` live entries of its
current template, discards failed, stale, aged and extra ones (an Event on the pool says why),
and writes the pool's status. Level-triggered: woken when a pool, a VMConfig or an entry
changes, and every few seconds for the age limits.

A pool being deleted holds the finalizer shoal.dev/warmpool until its entries are gone (their
nodes remove the saved files as each entry's object goes).
"""

import asyncio
import contextlib
import functools
import logging
import secrets
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shoal.api.objects import Objects
from shoal.errors import AlreadyExists, ApiError, NotFound
from shoal.model.kinds import VirtualMachine
from shoal.model.meta import now_iso, set_condition
from shoal.model.registry import BY_KIND
from shoal.model.warmpool import POOL_LABEL, WARM_POOL_FINALIZER
from shoal.store import events
from shoal.store.store import Change, Obj, Store
from shoal.warmpool import entries

log = logging.getLogger(__name__)
SOURCE = "warmpool"
INTERVAL = 2.0
WATCHED_KINDS = frozenset({"WarmPool", "VMConfig", "Image"})
# After entries fail (an image that does not boot, a node that cannot save), new ones wait
# 2, 4, 8... seconds, up to this, until an entry is saved again.
MAX_BACKOFF = 300.0
# Entries lost with their node, or whose files went: no reason to make the next ones wait.
NOT_THE_ENTRYS_FAULT = frozenset({"NodeLost", "SavedStateLost"})


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0
    reason: str = ""
    last: float = 0.0  # when the last one failed

    def failed(self, reason: str, now: float) -> None:
        self.failures += 1
        self.last = now
        self.until = now + min(MAX_BACKOFF, 2.0**self.failures)
        self.reason = reason.removeprefix("it failed: ")


def entry_name(pool: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{pool}-w" + "".join(secrets.choice(alphabet) for _ in range(5))


class WarmPools:
    def __init__(self, store: Store, objects: Objects, interval: float = INTERVAL) -> None:
        self.store = store
        self.objects = objects
        self.interval = interval
        self._wake = asyncio.Event()
        # (namespace, pool) -> the last problem told in an Event (told once, not every pass)
        self._told: dict[tuple[str, str], str] = {}
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._had_pools = True

    def _on_changes(self, loop: asyncio.AbstractEventLoop, changes: list[Change]) -> None:
        """Called from the writer's thread: wake the loop for a change it cares about."""
        for change in changes:
            if change.kind in WATCHED_KINDS or (
                change.kind == "VirtualMachine" and POOL_LABEL in change.body
            ):
                loop.call_soon_threadsafe(self._wake.set)
                return

    async def run(self) -> None:
        listener = functools.partial(self._on_changes, asyncio.get_running_loop())
        self.store.add_change_listener(listener)
        try:
            while True:
                self._wake.clear()
                try:
                    await asyncio.to_thread(self.run_once)
                except Exception:
                    log.exception("warm pool pass failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
        finally:
            self.store.remove_change_listener(listener)

    def run_once(self) -> None:
        pools, _ = self.store.list_objects("WarmPool")
        if not pools and not self._had_pools:
            return  # (after the last pool went, passes look for its entries until they are gone)
        vms, _ = self.store.list_objects("VirtualMachine")
        by_pool: dict[tuple[str, str], list[Obj]] = {}
        for vm in vms:
            name = entries.pool_of(vm)
            if name is not None:
                by_pool.setdefault((vm["metadata"]["namespace"], name), []).append(vm)
        for pool in pools:
            key = (pool["metadata"]["namespace"], pool["metadata"]["name"])
            try:
                self._sync(pool, by_pool.pop(key, []))
            except ApiError as error:  # changed meanwhile: the next pass looks again
                log.debug("warm pool %s/%s: %s", *key, error)
            except Exception:  # one pool's trouble never stops the others
                log.exception("warm pool %s/%s failed; retrying", *key)
        self._had_pools = bool(pools) or bool(by_pool)
        for (namespace, name), orphans in by_pool.items():
            # Entries of a pool that is gone (its finalizer removed by hand, say): nothing
            # would ever claim or discard them.
            for orphan in orphans:
                if not orphan["metadata"].get("deletionTimestamp"):
                    log.info("deleting entry %s of warm pool %s/%s, which is gone",
                             orphan["metadata"]["name"], namespace, name)  # fmt: skip
                    with contextlib.suppress(ApiError):
                        self.objects.delete(
                            BY_KIND["VirtualMachine"], namespace, orphan["metadata"]["name"]
                        )

    # -- one pool ----------------------------------------------------------------------------

    def _sync(self, pool: Obj, members: list[Obj]) -> None:
        meta = pool["metadata"]
        namespace = meta["namespace"]
        if meta.get("deletionTimestamp"):
            self._tear_down(pool, members)
            return
        config = self._get("VMConfig", namespace, pool["spec"]["config"])
        if config is None:
            problem = f"VMConfig {pool['spec']['config']!r} not found in namespace {namespace}"
            for member in members:
                self._discard(pool, member, f"its VMConfig is gone: {problem}")
            self._set_status(pool, members, problem, "ConfigNotFound")
            return
        image_name = entries.image_name(config)
        image = self._get("Image", "", image_name) if image_name else None
        missing_image = image_name is not None and image is None
        # Without its Image no entry can be made, and those there are kept (not judged stale).
        template = None if missing_image else entries.template_hash(pool, config, image)
        views = {vm["metadata"]["name"]: vm for vm in members}
        seen = [entries.view(vm) for vm in members]
        decided = entries.plan(pool["spec"], template, seen)
        backoff = self._backoff.setdefault((namespace, meta["name"]), _Backoff())
        now = time.time()
        if any(view.state == "ready" and (view.saved or 0.0) > backoff.last for view in seen):
            backoff.failures, backoff.until = 0, 0.0  # an entry was saved since the last failure
        failed = ""
        for entry, why in decided.discard:
            if not self._discard(pool, views[entry], why) or not why.startswith("it failed"):
                continue
            if (views[entry].get("status") or {}).get("reason") not in NOT_THE_ENTRYS_FAULT:
                failed = why
        if failed:
            backoff.failed(failed, now)  # once a pass, however many failed together
        problem = ""
        if missing_image:
            problem = f"Image {image_name!r} (of VMConfig {config['metadata']['name']}) not found"
            decided = entries.Plan(make=0, discard=decided.discard)
        elif decided.make and now < backoff.until:
            at = datetime.fromtimestamp(backoff.until, UTC).strftime("%H:%M:%S")
            problem = (
                f"{backoff.failures} entries failed in a row, the next is made at {at} UTC "
                f"(the last failed: {backoff.reason})"
            )
            decided = entries.Plan(make=0, discard=decided.discard)
        for _ in range(decided.make):
            if template is None:
                break
            try:
                self._make(pool, config, template)
            except ApiError as error:
                problem = f"an entry was refused: {error.message}"
                break
        if missing_image:
            reason = "ImageNotFound"
        elif now < backoff.until:
            reason = "EntriesFailing"
        elif problem:
            reason = "EntryRefused"
        elif not ((config["spec"].get("access") or {}).get("secretRef") or {}).get("name"):
            reason = "NoGuestAccess"
            problem = (
                f"VMConfig {config['metadata']['name']} sets no access.secretRef: the pool's VMs "
                "get no fresh identity"
            )
        self._set_status(pool, members, problem, reason if problem else "")

    def _get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.store.get(kind, namespace, name)
        except NotFound:
            return None

    def _make(self, pool: Obj, config: Obj, template: str) -> None:
        meta = pool["metadata"]
        mode = pool["spec"].get("mode") or "suspended"
        body: dict[str, Any] = {
            "metadata": {
                "namespace": meta["namespace"],
                "labels": {POOL_LABEL: meta["name"]},
                "annotations": {
                    entries.TEMPLATE_ANNOTATION: template,
                    entries.MODE_ANNOTATION: mode,
                },
            },
            "spec": entries.entry_spec(pool, config),
        }
        info = BY_KIND["VirtualMachine"]
        for _ in range(4):
            body["metadata"]["name"] = entry_name(meta["name"])
            with contextlib.suppress(AlreadyExists):
                self.objects.create(info, meta["namespace"], VirtualMachine.model_validate(body))
                return

    def _discard(self, pool: Obj, entry: Obj, why: str) -> bool:
        """Delete the entry (unless claimed or changed meanwhile); whether it was."""
        meta = entry["metadata"]
        if meta.get("deletionTimestamp"):
            return False
        try:
            self.objects.delete(
                BY_KIND["VirtualMachine"],
                meta["namespace"],
                meta["name"],
                expect_rv=meta["resourceVersion"],
            )
        except ApiError:
            return False  # claimed or changed meanwhile: the next pass decides again
        message = f"entry {meta['name']} discarded: {why}"
        failed = why.startswith("it failed")
        events.record(
            self.store,
            pool,
            "EntryDiscarded",
            message,
            type_="Warning" if failed else "Normal",
            source=SOURCE,
        )
        with contextlib.suppress(NotFound):
            self.store.mutate(
                "WarmPool",
                pool["metadata"]["namespace"],
                pool["metadata"]["name"],
                functools.partial(_note_discard, message),
            )
        return True

    def _tear_down(self, pool: Obj, members: list[Obj]) -> None:
        for member in members:
            self._discard(pool, member, "the pool is being deleted")
        if members:
            self._set_status(pool, members, "deleting: waiting for its entries to go", "Deleting")
            return
        meta = pool["metadata"]
        with contextlib.suppress(NotFound):
            self.store.mutate("WarmPool", meta["namespace"], meta["name"], _drop_finalizer)

    # -- status ------------------------------------------------------------------------------

    def _set_status(self, pool: Obj, members: list[Obj], problem: str, reason: str) -> None:
        meta = pool["metadata"]
        key = (meta["namespace"], meta["name"])
        counts = {"ready": 0, "refilling": 0, "claiming": 0}
        for member in members:
            state = entries.view(member).state
            if state in counts:
                counts[state] += 1
        size = int(pool["spec"].get("size") or 0)
        message = problem or f"{counts['ready']}/{size} ready"
        if problem and self._told.get(key) != problem:
            events.record(self.store, pool, reason, problem, type_="Warning", source=SOURCE)
        self._told[key] = problem

        def change(current: Obj) -> Obj | None:
            before = current.get("status") or {}
            status = {**before, **counts, "message": message}
            conditions = [dict(c) for c in before.get("conditions") or []]
            full = not problem and counts["ready"] >= size
            set_condition(
                conditions,
                "Ready",
                "True" if full else "False",
                reason or ("Full" if full else "Refilling"),
                message,
            )
            status["conditions"] = conditions
            status["observedGeneration"] = current["metadata"].get("generation", 0)
            if status == before:
                return None
            current["status"] = status
            return current

        with contextlib.suppress(NotFound):
            self.store.mutate("WarmPool", meta["namespace"], meta["name"], change)


def _note_discard(message: str, pool: Obj) -> Obj:
    status = pool.setdefault("status", {})
    status["lastDiscardReason"] = message
    status["lastDiscardTime"] = now_iso()
    return pool


def _drop_finalizer(pool: Obj) -> Obj | None:
    finalizers = pool["metadata"].get("finalizers") or []
    if WARM_POOL_FINALIZER not in finalizers:
        return None
    pool["metadata"]["finalizers"] = [f for f in finalizers if f != WARM_POOL_FINALIZER]
    return pool
