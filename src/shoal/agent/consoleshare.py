"""A VM's serial console shared by everyone watching it.

QEMU's console socket serves one connection at a time; a second would wait unseen until the
first left. The agent holds that one connection per VM and shares it: what the guest prints goes
to every client, what any client types goes to the guest (as two people at one terminal). The
connection closes when the last client leaves. A client too slow to take what the guest prints
(its backlog over MAX_BACKLOG chunks) is dropped rather than holding the others back.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from shoal.tunnel.protocol import BROKEN, CHUNK, EOF, is_eof, reason_text

MAX_BACKLOG = 1024
Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class _Share:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.clients: set[asyncio.Queue[bytes | None]] = set()
        self.reading = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(CHUNK):
                for queue in list(self.clients):
                    if queue.qsize() >= MAX_BACKLOG:
                        self.clients.discard(queue)
                        queue.put_nowait(None)
                    else:
                        queue.put_nowait(data)
        except OSError:
            pass
        for queue in list(self.clients):
            queue.put_nowait(None)

    def close(self) -> None:
        self.reading.cancel()
        self.writer.close()


class ConsoleShares:
    """The shared console connections of one agent, by VM."""

    def __init__(self) -> None:
        self._shares: dict[str, _Share] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def _join(
        self, vm: str, open_console: Opener
    ) -> tuple[_Share, asyncio.Queue[bytes | None]]:
        async with self._opening.setdefault(vm, asyncio.Lock()):
            share = self._shares.get(vm)
            if share is None or share.reading.done():
                share = _Share(*await open_console())
                self._shares[vm] = share
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        share.clients.add(queue)
        return share, queue

    def _leave(self, vm: str, share: _Share, queue: asyncio.Queue[bytes | None]) -> None:
        share.clients.discard(queue)
        if share.clients:
            return
        share.close()
        if self._shares.get(vm) is share:
            del self._shares[vm]

    async def open(self, vm: str, open_console: Opener) -> Callable[[Any], Awaitable[None]]:
        """Join the VM's console (opening it if nobody watches yet: raises what open_console
        raises); the result serves one client's WebSocket until either side ends."""
        share, queue = await self._join(vm, open_console)

        async def serve(websocket: Any) -> None:
            try:
                await _carry(websocket, share, queue)
            finally:
                self._leave(vm, share, queue)

        return serve


async def _carry(websocket: Any, share: _Share, queue: asyncio.Queue[bytes | None]) -> None:
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

    tasks = {asyncio.create_task(outbound()), asyncio.create_task(inbound())}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    broke = next((task.exception() for task in done if task.exception()), None)
    with contextlib.suppress(Exception):
        if broke is not None and not isinstance(broke, ConnectionClosed):
            await websocket.close(BROKEN, reason_text(f"the VM's serial console broke: {broke}"))
        else:
            await websocket.send(EOF)
            await websocket.close()
