"""A VM's serial console shared by everyone watching it.

QEMU's console socket serves one connection at a time; a second would wait unseen until the
first left. The agent holds that one connection per VM and shares it: what the guest prints goes
to every viewer, what any viewer types goes to the guest (as two people at one terminal). The
connection closes when the last viewer leaves. A viewer too slow to take what the guest prints
(more than MAX_BACKLOG bytes waiting for it) is dropped, with a reason, rather than holding the
others back or the agent's memory.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from shoal.tasks import first_of
from shoal.tunnel.protocol import BROKEN, CHUNK, EOF, close_code, is_eof, reason_text

MAX_BACKLOG = 2**20
Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class _Queue:
    """What the guest printed, waiting for one viewer; None ends it."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.waiting = 0
        self.dropped = asyncio.Event()  # set when the share gave up on this viewer

    def put(self, data: bytes | None) -> None:
        if data is not None:
            self.waiting += len(data)
        self.items.put_nowait(data)

    async def get(self) -> bytes | None:
        data = await self.items.get()
        if data is not None:
            self.waiting -= len(data)
        return data


class _Share:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.viewers: set[_Queue] = set()
        self.reading = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(CHUNK):
                for queue in list(self.viewers):
                    if queue.waiting + len(data) > MAX_BACKLOG:
                        self.viewers.discard(queue)
                        queue.dropped.set()
                    else:
                        queue.put(data)
        except OSError:
            pass
        for queue in list(self.viewers):
            queue.put(None)

    def close(self) -> None:
        self.reading.cancel()
        self.writer.close()


class Viewer:
    """One client of a shared console, from the moment it joined; leave() is safe to repeat."""

    def __init__(self, shares: "ConsoleShares", vm: str, share: _Share) -> None:
        self._shares = shares
        self._vm = vm
        self._share = share
        self._queue = _Queue()
        share.viewers.add(self._queue)
        self._left = False

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._shares.leave(self._vm, self._share, self._queue)

    async def serve(self, websocket: Any) -> None:
        """Carry the console both ways over websocket until either side ends, then leave."""
        try:
            await _carry(websocket, self._share, self._queue)
        finally:
            self.leave()


class ConsoleShares:
    """The shared console connections of one agent, by VM."""

    def __init__(self) -> None:
        self._shares: dict[str, _Share] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def open(self, vm: str, open_console: Opener) -> Viewer:
        """Join the VM's console (opening it if nobody watches yet: raises what open_console
        raises). The caller must serve() or leave() the viewer."""
        async with self._opening.setdefault(vm, asyncio.Lock()):
            share = self._shares.get(vm)
            if share is None or share.reading.done():
                share = _Share(*await open_console())
                self._shares[vm] = share
            return Viewer(self, vm, share)

    def leave(self, vm: str, share: _Share, queue: _Queue) -> None:
        share.viewers.discard(queue)
        if share.viewers:
            return
        share.close()
        if self._shares.get(vm) is share:
            del self._shares[vm]
            lock = self._opening.get(vm)
            if lock is not None and not lock.locked():
                del self._opening[vm]


async def _carry(websocket: Any, share: _Share, queue: _Queue) -> None:
    async def outbound() -> None:
        while (data := await queue.get()) is not None:
            await websocket.send(data)

    async def inbound() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in websocket:
                if isinstance(message, str):
                    if is_eof(message):
                        return
                    continue
                share.writer.write(message)
                await share.writer.drain()

    # A dropped viewer is closed even while a send to it is stuck (it reads nothing).
    done = await first_of(
        {
            asyncio.create_task(outbound()),
            asyncio.create_task(inbound()),
            asyncio.create_task(queue.dropped.wait()),
        }
    )
    broke = next(
        (task.exception() for task in done if not task.cancelled() and task.exception()), None
    )
    with contextlib.suppress(Exception):
        if queue.dropped.is_set():
            await websocket.close(
                close_code(429), reason_text("too slow to follow the VM's serial console")
            )
        elif broke is not None and not isinstance(broke, ConnectionClosed):
            await websocket.close(BROKEN, reason_text(f"the VM's serial console broke: {broke}"))
        else:
            await websocket.send(EOF)
            await websocket.close()
