"""Carry a tunnel's bytes between a WebSocket of the `websockets` library (the agent's and the
CLI's ends) and a byte stream (a VM's port, a local connection, stdin and stdout).

Each direction waits for the other side to take what it sent before reading more (the socket's
drain, the WebSocket's send), so a slow reader never makes either end buffer without bound."""

import asyncio
import contextlib
from typing import Any

from websockets.exceptions import ConnectionClosed

from shoal.tunnel.protocol import CHUNK, EOF, is_eof


async def relay(websocket: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Until both directions reached their end, or either side broke or closed.

    Half-close is carried: EOF on the stream becomes an EOF frame, and an EOF frame shuts the
    stream's writing side, while the other direction goes on."""

    async def outbound() -> None:
        while data := await reader.read(CHUNK):
            await websocket.send(data)
        await websocket.send(EOF)

    async def inbound() -> bool:
        """True when the far end sent EOF, False when the WebSocket closed."""
        with contextlib.suppress(ConnectionClosed):
            async for message in websocket:
                if isinstance(message, str):
                    if is_eof(message):
                        if writer.can_write_eof():
                            writer.write_eof()
                        return True
                    continue
                writer.write(message)
                await writer.drain()
        return False

    sending = asyncio.create_task(outbound())
    receiving = asyncio.create_task(inbound())
    pending: set[asyncio.Task[Any]] = {sending, receiving}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if receiving in done and (receiving.exception() or not receiving.result()):
                break  # the tunnel closed (or the stream broke): nothing more will be carried
            if sending in done and sending.exception():
                break
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()
