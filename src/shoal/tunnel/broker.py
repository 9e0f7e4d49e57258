"""The controller's side of tunnels: agents dial in, clients are paired with what they serve.

Each agent keeps one control WebSocket open to the controller (it dials out, so hosts need no
open port). To serve a client, the controller sends an `open` request down that channel with a
fresh stream id; the agent answers by dialing a second WebSocket for that id, which the broker
hands to the waiting client handler. From then on the two carry bytes; the broker never looks
inside them. An agent that cannot serve the request closes its stream with a reason, which the
client gets as the error.
"""

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from shoal.errors import Unavailable

log = logging.getLogger(__name__)
OPEN_TIMEOUT = 15.0


@dataclass
class AgentLink:
    node: str
    socket: WebSocket
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Broker:
    def __init__(self) -> None:
        self._links: dict[str, AgentLink] = {}
        self._pending: dict[str, tuple[str, asyncio.Future[WebSocket]]] = {}

    def connected(self, node: str) -> bool:
        return node in self._links

    async def serve_agent(self, node: str, socket: WebSocket) -> None:
        """Hold an agent's control channel until it closes; a newer one replaces it."""
        link = AgentLink(node, socket)
        previous = self._links.get(node)
        self._links[node] = link
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous.socket.close(1012, "replaced by a newer connection")
        log.info("agent of node %s connected for tunnels", node)
        try:
            while True:
                await socket.receive_text()  # the agent sends nothing but keep-alives
        except Exception:  # closed or broken: either way the link is gone
            pass
        finally:
            if self._links.get(node) is link:
                del self._links[node]
                log.info("agent of node %s disconnected from tunnels", node)

    async def open(self, node: str, request: dict[str, Any]) -> WebSocket:
        """Ask node's agent for a stream; return its WebSocket once the agent dialed it."""
        link = self._links.get(node)
        if link is None:
            raise Unavailable(f"the agent of node {node} is not connected to this controller")
        stream_id = secrets.token_urlsafe(16)
        waiter: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = (node, waiter)
        try:
            async with link.send_lock:
                await link.socket.send_json({"type": "open", "id": stream_id, **request})
            return await asyncio.wait_for(waiter, OPEN_TIMEOUT)
        except TimeoutError:
            raise Unavailable(
                f"the agent of node {node} did not open the stream within {OPEN_TIMEOUT:.0f}s"
            ) from None
        except Exception as error:
            if isinstance(error, Unavailable):
                raise
            raise Unavailable(f"the agent of node {node} went away: {error}") from None
        finally:
            self._pending.pop(stream_id, None)

    def accept_stream(self, node: str, stream_id: str) -> asyncio.Future[WebSocket] | None:
        """The waiter for a stream the agent dials, if node asked for it and it is still wanted."""
        entry = self._pending.get(stream_id)
        if entry is None or entry[0] != node or entry[1].done():
            return None
        return entry[1]
