"""The watch hub: one reader of the change log that every watcher in this process shares.

Writers in this process wake the hub at once (Store listeners); writes from other processes (more
controller replicas on one PostgreSQL) are picked up by a poll. Recent changes stay in memory, in
one ring of every change and one ring per kind, so that a watcher of VMs is neither woken nor made
to scan for the heartbeats of a thousand nodes. A watcher that falls behind its ring reads the
change log from the store, and one that falls behind the log's compaction gets Gone (410) and
relists.
"""

import asyncio
import bisect
import contextlib
from collections import deque
from collections.abc import AsyncGenerator

from shoal.errors import Gone
from shoal.store.store import Change, Store

BATCH = 5000


class Ring:
    """The recent changes of one kind (or of all, kind None), and an event set when it grows."""

    def __init__(self, floor: int, size: int) -> None:
        self.changes: deque[Change] = deque()
        self.rvs: deque[int] = deque()
        self.floor = floor  # the ring holds every change of its kind after this version
        self.size = size
        self.signal = asyncio.Event()

    def append(self, change: Change) -> None:
        self.changes.append(change)
        self.rvs.append(change.rv)
        if len(self.changes) > self.size:
            self.floor = self.changes.popleft().rv
            self.rvs.popleft()

    def after(self, cursor: int) -> list[Change] | None:
        """Its changes after cursor, or None when the ring no longer reaches back that far."""
        if cursor < self.floor:
            return None
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
        self._rings: dict[str | None, Ring] = {None: Ring(0, ring_size)}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.last_rv = await asyncio.to_thread(self._store.current_rv)
        self._rings = {None: Ring(self.last_rv, self._ring_size)}
        self._store.add_listener(self._on_commit)
        self._task = asyncio.create_task(self._run(), name="watch-hub")

    async def stop(self) -> None:
        self._store.remove_listener(self._on_commit)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_commit(self, rv: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def _ring(self, kind: str | None) -> Ring:
        ring = self._rings.get(kind)
        if ring is None:
            # Nothing of this kind is in memory yet: the ring is complete from now on.
            ring = self._rings[kind] = Ring(self.last_rv, self._ring_size)
        return ring

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands while the awaited event fires, and stop() would never return.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                batch = await asyncio.to_thread(self._store.changes_since, self.last_rv, BATCH)
            except Gone:
                await self._restart_from_now()
                continue
            except Exception:  # the database may be restarting; the next poll retries
                await asyncio.sleep(self._poll_interval)
                continue
            if not batch:
                continue
            touched: set[str | None] = {None}
            everything = self._rings[None]
            for change in batch:
                everything.append(change)
                if change.kind in self._rings:
                    self._rings[change.kind].append(change)
                    touched.add(change.kind)
            self.last_rv = batch[-1].rv
            if len(batch) == BATCH:
                self._wake.set()
            for kind in touched:
                self._rings[kind].wake()

    async def _restart_from_now(self) -> None:
        """The log was compacted past what the hub has read (it was stalled while others wrote):
        start again from now. Watchers behind that point read the log and get Gone, and relist."""
        self.last_rv = await asyncio.to_thread(self._store.current_rv)
        rings, self._rings = self._rings, {}
        for kind in rings:
            self._rings[kind] = Ring(self.last_rv, self._ring_size)
        for ring in rings.values():
            ring.wake()

    async def wait_past(self, cursor: int, timeout: float) -> None:
        """Return once the hub has seen a change after cursor, or after timeout."""
        if self.last_rv > cursor:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._rings[None].signal.wait()

    async def changes(
        self, since: int, *, heartbeat: float | None = None, kind: str | None = None
    ) -> AsyncGenerator[Change | int, None]:
        """Every change after `since` (of one kind, if given), in order, forever.

        After `heartbeat` seconds of quiet it yields an int: the version up to which every change
        (of the kind) has been yielded, which a watcher can resume from (a Kubernetes BOOKMARK).

        Raises Gone when `since` is older than the change log reaches.
        """
        cursor = since
        while True:
            ring = self._ring(kind)
            signal = ring.signal
            top = self.last_rv  # the ring holds every change of its kind up to here
            batch = ring.after(cursor)
            more_in_log = False
            if batch is None:
                logged = await asyncio.to_thread(self._store.changes_since, cursor, BATCH)
                batch = [c for c in logged if kind is None or c.kind == kind]
                top = logged[-1].rv if logged else cursor
                more_in_log = bool(logged)
            for change in batch:
                yield change
                cursor = change.rv
            cursor = max(cursor, top)
            if batch or more_in_log:
                continue
            try:
                async with asyncio.timeout(heartbeat):
                    await signal.wait()
            except TimeoutError:
                yield cursor  # everything up to here was yielded; nothing later is promised
