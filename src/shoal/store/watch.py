"""The watch hub: one reader of the change log that every watcher in this process shares.

Writers in this process wake the hub at once (Store listeners); writes from other processes (more
controller replicas on one PostgreSQL) are picked up by a poll. Recent changes stay in a ring in
memory; a watcher that falls behind the ring reads the change log from the store, and one that
falls behind the log's compaction gets Gone (410) and relists.
"""

import asyncio
import bisect
import contextlib
from collections import deque
from collections.abc import AsyncGenerator

from shoal.errors import Gone
from shoal.store.store import Change, Store


class WatchHub:
    def __init__(
        self, store: Store, *, ring_size: int = 50_000, poll_interval: float = 1.0
    ) -> None:
        self._store = store
        self._ring: deque[Change] = deque()
        self._ring_rvs: deque[int] = deque()
        self._ring_size = ring_size
        self._poll_interval = poll_interval
        self._floor = 0  # the ring holds every change after this version
        self.last_rv = 0
        self._signal = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.last_rv = await asyncio.to_thread(self._store.current_rv)
        self._floor = self.last_rv
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

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands while the awaited event fires, and stop() would never return.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                batch = await asyncio.to_thread(self._store.changes_since, self.last_rv, 5000)
            except Gone:
                await self._restart_from_now()
                continue
            except Exception:  # the database may be restarting; the next poll retries
                await asyncio.sleep(self._poll_interval)
                continue
            if not batch:
                continue
            for change in batch:
                self._ring.append(change)
                self._ring_rvs.append(change.rv)
            self.last_rv = batch[-1].rv
            while len(self._ring) > self._ring_size:
                self._floor = self._ring.popleft().rv
                self._ring_rvs.popleft()
            if len(batch) == 5000:
                self._wake.set()
            signal, self._signal = self._signal, asyncio.Event()
            signal.set()

    async def _restart_from_now(self) -> None:
        """The log was compacted past what the hub has read (it was stalled while others wrote):
        start again from now. Watchers behind that point read the log and get Gone, and relist."""
        self.last_rv = await asyncio.to_thread(self._store.current_rv)
        self._ring.clear()
        self._ring_rvs.clear()
        self._floor = self.last_rv
        signal, self._signal = self._signal, asyncio.Event()
        signal.set()

    def _from_ring(self, cursor: int) -> list[Change] | None:
        if cursor < self._floor:
            return None
        start = bisect.bisect_right(self._ring_rvs, cursor)
        return [self._ring[i] for i in range(start, len(self._ring))]

    async def wait_past(self, cursor: int, timeout: float) -> None:
        """Return once the hub has seen a change after cursor, or after timeout."""
        if self.last_rv > cursor:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._signal.wait()

    async def changes(
        self, since: int, *, heartbeat: float | None = None
    ) -> AsyncGenerator[Change | int, None]:
        """Every change after `since`, in order, forever.

        After `heartbeat` seconds of quiet it yields an int: the version up to which every change
        has been yielded, which a watcher can resume from (a Kubernetes BOOKMARK).

        Raises Gone when `since` is older than the change log reaches.
        """
        cursor = since
        while True:
            signal = self._signal
            batch = self._from_ring(cursor)
            if batch is None:
                batch = await asyncio.to_thread(self._store.changes_since, cursor, 5000)
            if batch:
                for change in batch:
                    yield change
                    cursor = change.rv
                continue
            try:
                async with asyncio.timeout(heartbeat):
                    await signal.wait()
            except TimeoutError:
                yield cursor  # everything up to here was yielded; nothing later is promised
