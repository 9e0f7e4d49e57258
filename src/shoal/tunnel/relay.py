"""Carry a tunnel's bytes between a WebSocket of the `websockets` library (the agent's and the
CLI's ends) and a byte stream (a VM's port, a local connection, stdin and stdout).

Each direction waits for the other side to take what it sent before reading more (the socket's
drain, the WebSocket's send), so a slow reader never makes either end buffer without bound.

A tunnel ends cleanly only when both directions reached their EOF. When the stream breaks (a
reset, a read or write error), the tunnel is closed with BROKEN and what broke as the reason;
when the tunnel closes with anything but a normal close, the stream is aborted (reset, not
closed). Either way the program at the far end sees an error, never a cut answer that looks whole.
"""

import asyncio
import contextlib
import socket
import struct
from typing import Any

from websockets.exceptions import ConnectionClosed

from shoal.tunnel.protocol import BROKEN, CHUNK, EOF, NORMAL_CLOSES, is_eof, reason_text


async def relay(
    websocket: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
) -> None:
    """Until both directions reached their end, or either side broke or closed.

    Half-close is carried: EOF on the stream becomes an EOF frame, and an EOF frame shuts the
    stream's writing side, while the other direction goes on. peer names the stream in the
    reason a broken stream closes the tunnel with ("the VM's port 22")."""

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
    broke: BaseException | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if receiving in done:
                broke = receiving.exception()
                if broke or not receiving.result():
                    break  # the tunnel closed (or the stream broke): nothing more will be carried
            if sending in done and sending.exception():
                broke = sending.exception()
                break
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if broke is not None and not isinstance(broke, ConnectionClosed):
            _reset(writer)
            reason = reason_text(f"{peer} broke: {_describe(broke)}")
            with contextlib.suppress(Exception):
                await websocket.close(BROKEN, reason)
        else:
            with contextlib.suppress(Exception):
                if websocket.close_code in (None, *NORMAL_CLOSES):
                    writer.close()
                else:
                    _reset(writer)
            with contextlib.suppress(Exception):
                await websocket.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the stream at once; a TCP connection is reset (RST), not ended with a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__
