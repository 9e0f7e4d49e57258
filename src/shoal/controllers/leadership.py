"""Which controller replica runs the loops: the holder of the leader lease (shoal.store.lease).

Every replica serves the whole API. Each asks for the lease every ttl/3 seconds (and says it is
up); the one that holds it runs the loops (scheduler, node lifecycle, GC, image caches, runner
pools, warm pools) fenced with its epoch, so that once its lease has gone to another replica
none of its writes lands, even if it was paused and did not notice. A leader that cannot renew
stops its loops before its lease can expire; one that stops gives the lease up at once.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from shoal.controllers import LEADER_TTL
from shoal.store import lease
from shoal.store.lease import Lease
from shoal.store.store import Store

log = logging.getLogger(__name__)
DEFAULT_TTL = LEADER_TTL

Loops = Callable[[], list[Coroutine[Any, Any, None]]]


class Leadership:
    def __init__(
        self, store: Store, loops: Loops, replica: str, address: str, ttl: float = DEFAULT_TTL
    ) -> None:
        self.store = store
        self.loops = loops
        self.replica = replica
        # Who holds the lease: the replica's name and this process's own mark, so that a
        # replica restarted under the same name never inherits its former self's epoch.
        self.holder = f"{replica}#{secrets.token_hex(4)}"
        self.address = address
        self.ttl = ttl
        self.epoch: int | None = None  # while this replica leads
        self.lease: Lease | None = None  # as last read
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    async def run(self) -> None:
        every = self.ttl / 3
        renewed = time.monotonic()
        try:
            while True:
                try:
                    await asyncio.to_thread(
                        lease.heartbeat, self.store, self.replica, self.ttl, self.address
                    )
                    current = await asyncio.to_thread(
                        lease.acquire, self.store, self.holder, self.ttl, self.address
                    )
                    self.lease = current
                    if current.holder == self.holder:
                        renewed = time.monotonic()
                        if self.epoch != current.epoch:
                            await self._stop("its lease changed")
                            self._start(current.epoch)
                    elif self.leading:
                        who = lease.replica_of(current.holder)
                        await self._stop(f"replica {who} leads (epoch {current.epoch})")
                except Exception as error:  # the database is down or restarting
                    log.warning(
                        "replica %s: cannot renew the leader lease: %s", self.replica, error
                    )
                    # Stop before the lease can expire at the database and another take over.
                    if self.leading and time.monotonic() - renewed > self.ttl - every:
                        await self._stop("the leader lease could not be renewed")
                await asyncio.sleep(every)
        finally:
            epoch = self.epoch
            await self._stop("the replica is stopping")
            if epoch is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(lease.release, self.store, self.holder, epoch)

    def _start(self, epoch: int) -> None:
        log.info("replica %s leads (epoch %d): starting the loops", self.replica, epoch)
        self.epoch = epoch
        with lease.fenced(self.holder, epoch):  # the tasks made here carry the fence
            self._tasks = [
                asyncio.create_task(coro, name=f"leader-{getattr(coro, '__qualname__', 'loop')}")
                for coro in self.loops()
            ]

    async def _stop(self, why: str) -> None:
        if self.epoch is None:
            return
        log.info("replica %s no longer leads (%s): stopping the loops", self.replica, why)
        self.epoch = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
