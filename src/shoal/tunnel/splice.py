"""The controller's middle of a tunnel: frames from the client's WebSocket go to the agent's and
back, untouched, until one side closes or the tunnel sits idle too long.

Sending waits until the far socket took the frame, and each socket queues only a few received
frames before it stops reading (the server's ws_max_queue), so a client that reads nothing stalls
the agent instead of filling the controller's memory."""

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket

from shoal.tasks import first_of
from shoal.tunnel.protocol import (
    BROKEN,
    NORMAL,
    NORMAL_CLOSES,
    close_code,
    reason_text,
    status_of,
)


@dataclass
class Closed:
    """How one side of a tunnel ended."""

    code: int
    reason: str


Count = Callable[[int], None]


async def _carry(
    source: WebSocket, sink: WebSocket, touched: list[float], count: Count | None
) -> Closed:
    while True:
        try:
            message = await source.receive()
        except Exception as error:  # a broken connection
            return Closed(1006, str(error))
        if message["type"] == "websocket.disconnect":
            return Closed(int(message.get("code") or NORMAL), str(message.get("reason") or ""))
        touched[0] = time.monotonic()
        frame: dict[str, Any] = {"type": "websocket.send"}
        if message.get("bytes") is not None:
            frame["bytes"] = message["bytes"]
        elif message.get("text") is not None:
            frame["text"] = message["text"]
        else:
            continue
        if count is not None:
            count(len(frame.get("bytes") or frame.get("text") or b""))
        try:
            await sink.send(frame)
        except Exception:  # the far side is gone: its own carry reports how
            await asyncio.Event().wait()


async def _idle(touched: list[float], timeout: float) -> Closed:
    while True:
        left = touched[0] + timeout - time.monotonic()
        if left <= 0:
            return Closed(close_code(408), f"the tunnel was idle for {timeout:.0f}s")
        await asyncio.sleep(left)


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await socket.close(code, reason_text(reason))


async def splice(
    client: WebSocket,
    agent: WebSocket,
    *,
    node: str,
    idle_timeout: float,
    counts: tuple[Count, Count] | None = None,
) -> None:
    """Carry frames both ways; close both sides with the reason the first one ended. counts:
    told the size of each frame carried (to the agent, to the client)."""
    touched = [time.monotonic()]
    up, down = counts if counts is not None else (None, None)
    upstream = asyncio.create_task(_carry(client, agent, touched, up))
    downstream = asyncio.create_task(_carry(agent, client, touched, down))
    idle = asyncio.create_task(_idle(touched, idle_timeout))
    done = await first_of({upstream, downstream, idle})
    if downstream in done:
        ended = downstream.result()
        if not _passes_on(ended):
            ended = Closed(close_code(503), f"lost the connection to the agent of node {node}")
        await _close(client, ended.code, ended.reason)
        await _close(agent, NORMAL, "")
    elif upstream in done:
        ended = upstream.result()
        if ended.code in NORMAL_CLOSES:
            ended = Closed(NORMAL, "the client closed the tunnel")
        elif not _passes_on(ended):
            ended = Closed(BROKEN, "lost the connection to the client")
        await _close(agent, ended.code, ended.reason)
        await _close(client, NORMAL, "")
    else:
        ended = idle.result()
        await _close(agent, ended.code, ended.reason)
        await _close(client, ended.code, ended.reason)


def _passes_on(closed: Closed) -> bool:
    """A close the other side should get as it is: a normal one, or one of ours with a reason."""
    return closed.code in NORMAL_CLOSES or status_of(closed.code) is not None
