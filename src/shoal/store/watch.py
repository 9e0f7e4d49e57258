"""The watch hub: one reader of the change log that every watcher in this process shares.

Writes of this process reach the hub as they commit (a Store change listener), with their stored
JSON text, so the hub neither reads nor parses them again. Writes from other processes (more
controller replicas on one PostgreSQL) are read from the change log: at once when PostgreSQL
announces their version (LISTEN/NOTIFY, shoal.store.notify) or a gap in the versions shows that
one happened, and on a poll otherwise. Versions commit in order (every writer takes the next one
under the counter's row lock, held to its commit), so reading the log after a version never
skips one committed later.

Recent changes stay in memory in rings, each keyed by what its watchers can want: every change
(the scheduler), the changes of one kind, and the changes of the VMs bound to one node (an agent's
watch with fieldSelector spec.nodeName=<node>). A change wakes only the rings it lands in, so the
heartbeat of a node wakes no watcher of VMs, and a change to a VM wakes its node's agent rather
than every agent. A watcher that falls behind its ring reads the change log from the store, and one
that falls behind the log's compaction gets Gone (410) and relists.
"""

import asyncio
import bisect
import contextlib
import logging
from collections import Counter, deque
from collections.abc import AsyncGenerator, Iterable

from shoal.errors import Gone
from shoal.store.notify import Listener
from shoal.store.objectcache import ObjectCache
from shoal.store.store import Change, Store

log = logging.getLogger(__name__)

BATCH = 5000

# (kind, node): (None, None) holds every change, (kind, None) those of a kind, (kind, node) those
# of the objects of a kind bound to a node (spec.nodeName, which only VirtualMachines have).
RingKey = tuple[str | None, str | None]
EVERYTHING: RingKey = (None, None)


def ring_key(kind: str | None, node_name: str | None = None) -> RingKey:
    return (kind, node_name if kind is not None else None)


def ring_keys(change: Change, keyed_kinds: Iterable[str] = ()) -> list[RingKey]:
    """The rings a change belongs in. Its node is looked up (which parses the object) only for
    kinds that have per-node rings."""
    keys = [EVERYTHING, (change.kind, None)]
    if change.kind in keyed_kinds and (node := change.node_name) is not None:
        keys.append((change.kind, node))
    return keys


def belongs(change: Change, key: RingKey) -> bool:
    kind, node = key
    if kind is None:
        return True
    return change.kind == kind and (node is None or change.node_name == node)


class Ring:
    """The recent changes of one key, and an event set when it grows."""

    def __init__(self, floor: int, size: int) -> None:
        self.changes: deque[Change] = deque()
        self.rvs: deque[int] = deque()
        self.floor = floor  # the ring holds every change of its key after this version
        self.size = size
        self.signal = asyncio.Event()

    def append(self, change: Change) -> None:
        self.changes.append(change)
        self.rvs.append(change.rv)
        if len(self.changes) > self.size:
            self.floor = self.changes.popleft().rv
            self.rvs.popleft()

    def last(self) -> Change | None:
        return self.changes[-1] if self.changes else None

    def after(self, cursor: int) -> list[Change] | None:
        """Its changes after cursor, or None when the ring no longer reaches back that far."""
        if cursor < self.floor:
            return None
        if not self.rvs or cursor >= self.rvs[-1]:
            return []  # the common case: a watcher that is up to date
        start = bisect.bisect_right(self.rvs, cursor)
        return [self.changes[i] for i in range(start, len(self.changes))]

    def wake(self) -> None:
        signal, self.signal = self.signal, asyncio.Event()
        signal.set()


class WatchHub:
    def __init__(
        self, store: Store, *, ring_size: int = 50_000, poll_interval: float = 1.0
    ) -> None:
        self._store = store
        self._ring_size = ring_size
        self._poll_interval = poll_interval
        self.last_rv = 0
        self.history_resets = 0  # times the store was found to have lost changes the hub saw
        self._rings: dict[RingKey, Ring] = {EVERYTHING: Ring(0, ring_size)}
        self._watchers: Counter[RingKey] = Counter()  # per-node rings are dropped at zero
        self._keyed_kinds: Counter[str] = Counter()  # kinds with per-node rings, and how many
        self._pushed: dict[int, Change] = {}  # local commits heard ahead of a gap
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self.cache = ObjectCache()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.last_rv = await asyncio.to_thread(self._store.current_rv)
        self._rings = {EVERYTHING: Ring(self.last_rv, self._ring_size)}
        self._store.add_change_listener(self._on_commit)
        if self._store.dialect == "postgresql":
            self._listener = Listener(self._store.url, self._on_notify)
            self._listener.start()
        self._task = asyncio.create_task(self._run(), name="watch-hub")
        await self._load_cache()

    async def _load_cache(self) -> None:
        """Read the cached kinds into the object cache; what the hub applied meanwhile is taken
        from its ring (before the next await, so that no change slips between)."""
        for kind in sorted(self.cache.kinds):
            for _attempt in range(3):
                rows, rv = await asyncio.to_thread(self._store.list_bodies, kind)
                since = self._rings[EVERYTHING].after(rv)
                if since is not None:
                    self.cache.load(kind, rows, rv, since)
                    break

    async def stop(self) -> None:
        self._store.remove_change_listener(self._on_commit)
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
            self._listener = None
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_commit(self, written: list[Change]) -> None:
        """A commit of this process, heard on the writer's thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._accept, written)

    def _on_notify(self, rv: int) -> None:
        """A commit announced on PostgreSQL (any replica's, this one's too), on the listener's
        thread: read the log now if it is news."""
        loop = self._loop
        if rv > self.last_rv and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_if_behind, rv)

    def _wake_if_behind(self, rv: int) -> None:
        if rv > self.last_rv and rv not in self._pushed:
            self._wake.set()

    def _accept(self, written: list[Change]) -> None:
        for change in written:
            if change.rv > self.last_rv:
                self._pushed[change.rv] = change
        self._drain_pushed()
        if self._pushed:
            # A version is missing: another process wrote it (or a writer of this one has not
            # been heard yet). The log has it.
            self._wake.set()

    def _drain_pushed(self) -> None:
        batch: list[Change] = []
        while (change := self._pushed.pop(self.last_rv + len(batch) + 1, None)) is not None:
            batch.append(change)
        if batch:
            self._append(batch)
        for rv in [rv for rv in self._pushed if rv <= self.last_rv]:
            del self._pushed[rv]

    def _append(self, batch: list[Change]) -> None:
        """Put changes that follow last_rv in the rings they belong to, and wake those."""
        touched: set[RingKey] = set()
        for change in batch:
            for key in ring_keys(change, self._keyed_kinds):
                ring = self._rings.get(key)
                if ring is not None:
                    ring.append(change)
                    touched.add(key)
        self.last_rv = batch[-1].rv
        self.cache.apply(batch)
        for key in touched:
            self._rings[key].wake()

    def watchers_by_kind(self) -> dict[str, int]:
        """The watches this hub serves, by kind ("*": every kind, the scheduler's own)."""
        found: Counter[str] = Counter()
        for (kind, _node), count in self._watchers.items():
            found[kind or "*"] += count
        return dict(found)

    def _ring(self, key: RingKey) -> Ring:
        ring = self._rings.get(key)
        if ring is None:
            # Nothing of this key is in memory yet: the ring is complete from now on.
            ring = self._rings[key] = Ring(self.last_rv, self._ring_size)
        return ring

    def _subscribe(self, key: RingKey) -> None:
        self._watchers[key] += 1
        if key[1] is not None and self._watchers[key] == 1:
            self._keyed_kinds[str(key[0])] += 1

    def _unsubscribe(self, key: RingKey) -> None:
        self._watchers[key] -= 1
        if self._watchers[key] > 0:
            return
        del self._watchers[key]
        if key[1] is not None:
            kind = str(key[0])
            self._rings.pop(key, None)
            self._keyed_kinds[kind] -= 1
            if self._keyed_kinds[kind] <= 0:
                del self._keyed_kinds[kind]

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands while the awaited event fires, and stop() would never return.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            # The log is read from the last change the hub has, to see that it is still there
            # as it was: a database can come back from a crash or a failover without commits it
            # had acknowledged, and then hand out the same versions again for other changes.
            known = self._rings[EVERYTHING].last()
            since = known.rv - 1 if known is not None and known.rv == self.last_rv else self.last_rv
            try:
                batch = await asyncio.to_thread(self._store.changes_since, since, BATCH)
            except Gone:
                await self._restart_from_now()
                continue
            except Exception:  # the database may be restarting; the next poll retries
                await asyncio.sleep(self._poll_interval)
                continue
            if since < self.last_rv and known is not None and (not batch or batch[0] != known):
                await self._history_lost()
                continue
            # Commits of this process may have been heard while the log was read.
            fresh = [change for change in batch if change.rv > self.last_rv]
            if fresh:
                self._append(fresh)
            self._drain_pushed()
            if len(batch) == BATCH:
                self._wake.set()

    async def _history_lost(self) -> None:
        log.warning(
            "the store no longer holds change %d as this controller saw it: the database lost "
            "commits (a crash under asynchronous commit, or a failover to a standby that was "
            "behind); versions start again past it and every watch relists",
            self.last_rv,
        )
        self.history_resets += 1
        with contextlib.suppress(Exception):  # another replica may be doing the same
            await asyncio.to_thread(self._store.start_history_after, self.last_rv)
        await self._restart_from_now()

    async def _restart_from_now(self) -> None:
        """The log was compacted past what the hub has read (it was stalled while others wrote):
        start again from now. Watchers behind that point read the log and get Gone, and relist."""
        self.last_rv = await asyncio.to_thread(self._store.current_rv)
        self.cache.clear()
        self._drain_pushed()
        rings, self._rings = self._rings, {}
        for key in rings:
            self._rings[key] = Ring(self.last_rv, self._ring_size)
        for ring in rings.values():
            ring.wake()
        await self._load_cache()

    async def wait_past(self, cursor: int, timeout: float) -> None:
        """Return once the hub has seen a change after cursor, or after timeout."""
        if self.last_rv > cursor:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._rings[EVERYTHING].signal.wait()

    async def changes(
        self,
        since: int,
        *,
        heartbeat: float | None = None,
        first_heartbeat: float | None = None,
        kind: str | None = None,
        node_name: str | None = None,
    ) -> AsyncGenerator[Change | int, None]:
        """Every change after `since` (of one kind, and of the objects bound to one node, if
        given), in order, forever.

        After `heartbeat` seconds of quiet (`first_heartbeat` the first time, if given) it yields
        an int: the version up to which every change (of the kind) has been yielded, which a
        watcher can resume from (a Kubernetes BOOKMARK).

        Raises Gone when `since` is older than the change log reaches.
        """
        key = ring_key(kind, node_name)
        self._subscribe(key)
        quiet = heartbeat if first_heartbeat is None else first_heartbeat
        try:
            cursor = since
            while True:
                ring = self._ring(key)
                signal = ring.signal
                top = self.last_rv  # the ring holds every change of its key up to here
                batch = ring.after(cursor)
                more_in_log = False
                if batch is None:
                    logged = await asyncio.to_thread(self._store.changes_since, cursor, BATCH)
                    batch = [c for c in logged if belongs(c, key)]
                    top = logged[-1].rv if logged else cursor
                    more_in_log = bool(logged)
                for change in batch:
                    yield change
                    cursor = change.rv
                cursor = max(cursor, top)
                if batch or more_in_log:
                    continue
                try:
                    async with asyncio.timeout(quiet):
                        await signal.wait()
                except TimeoutError:
                    yield cursor  # everything up to here was yielded; nothing later is promised
                quiet = heartbeat
        finally:
            self._unsubscribe(key)
