"""The agent's side of tunnels: a control channel dialed out to the controller, and one stream
per request the controller sends down it (see shoal.tunnel.broker).

With several controller replicas (behind a load balancer) the agent holds a channel to each
replica, at the address each advertises (GET controllerstatus, looked at again every
REPLICAS_EVERY seconds), and dials each stream back to the replica that asked for it: whichever
replica a client's tunnel lands on, it reaches the agent through its own channel, and no replica
forwards for another. With one replica the channel goes to the server the agent was given.

Streams:
- `log`: a VM's serial console log (from its start or its last N bytes, and with follow, what the
  guest prints next);
- `port`: a TCP connection to a guest port, dialed here through the backend's open_port;
- `vnc` and `console`: the VM's display and serial console, from the backend's unix sockets;
- `push`: the VM's disk pushed to an OCI registry, with progress (shoal.agent.push);
- `exec`: a command run in the guest over SSH, as exec frames (shoal.agent.execstream).
"""

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.agent.consoleshare import ConsoleShares, Viewer
from shoal.agent.execstream import serve_exec
from shoal.agent.push import PushRefused, serve_push
from shoal.backends.base import Backend, BackendError, HasConsole, HasDisplay, HasSerialLog
from shoal.client import API, AsyncClient, resource_path
from shoal.tunnel.protocol import READY, REFUSED, close_code, reason_text
from shoal.tunnel.relay import relay

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
FOLLOW_POLL = 0.25
KEEPALIVE = 20.0
# How often the agent looks for replicas come or gone (every agent asks: not too often).
REPLICAS_EVERY = 30.0


class Refused(Exception):
    """The request cannot be served; the message goes to the client."""


class TunnelClient:
    def __init__(
        self,
        client: AsyncClient,
        backend: Backend,
        node: str,
        startup_log: Callable[[str], Path] | None = None,
    ) -> None:
        self.client = client
        self.backend = backend
        self.node = node
        self.startup_log = startup_log  # a VM's uid -> the file its startup script's output is in
        self.connected = asyncio.Event()
        self._streams: set[asyncio.Task[None]] = set()
        self._by_vm: dict[str, set[Any]] = {}
        self._consoles = ConsoleShares()
        self._clients: dict[str, AsyncClient] = {client.server: client}
        self._up: set[str] = set()  # the servers a channel is up to

    async def run(self) -> None:
        """Keep a control channel up to every replica, until cancelled."""
        channels: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                servers = await self._replica_servers()
                for server in set(channels) - set(servers):
                    channels.pop(server).cancel()
                for server in servers:
                    if server not in channels or channels[server].done():
                        channels[server] = asyncio.create_task(
                            self._hold(self._client_for(server)), name=f"channel-{server}"
                        )
                await asyncio.sleep(REPLICAS_EVERY * random.uniform(0.8, 1.2))
        finally:
            for task in [*channels.values(), *self._streams]:
                task.cancel()

    async def _replica_servers(self) -> list[str]:
        """The servers to hold a channel to: each live replica's advertised address when there
        are several, else the server this agent was given."""
        given = self.client.server
        try:
            status = await self.client.request("GET", f"{API}/controllerstatus")
        except Exception as error:  # an older controller, or it is restarting
            log.debug("node %s: cannot list the controller's replicas: %s", self.node, error)
            return [given]
        addresses = [r["address"] for r in status.get("replicas") or [] if r.get("up")]
        if len(addresses) < 2 or not all(addresses):
            return [given]
        scheme = given.split("://", 1)[0]
        return sorted(f"{scheme}://{address}" for address in addresses)

    def _client_for(self, server: str) -> AsyncClient:
        if server not in self._clients:
            self._clients[server] = AsyncClient(
                server, self.client.token, ca_pem=self.client.ca_pem
            )
        return self._clients[server]

    async def _hold(self, client: AsyncClient) -> None:
        """Keep one control channel up, reconnecting with backoff, until cancelled."""
        delay = 0.5
        path = resource_path("nodes", None, self.node, "tunnel")
        while True:
            try:
                async with client.websocket(path) as channel:
                    delay = 0.5
                    self._up.add(client.server)
                    self.connected.set()
                    log.info("node %s: tunnel channel up to %s", self.node, client.server)
                    keepalive = asyncio.create_task(self._keepalive(channel))
                    try:
                        async for message in channel:
                            self._serve(json.loads(message), client)
                    finally:
                        keepalive.cancel()
            except Exception as error:
                log.info("node %s: tunnel channel to %s down: %s", self.node, client.server, error)
            finally:
                self._up.discard(client.server)
                if not self._up:
                    self.connected.clear()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 15.0)

    @staticmethod
    async def _keepalive(channel: Any) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            await channel.send("{}")

    def _serve(self, request: dict[str, Any], client: AsyncClient) -> None:
        if request.get("type") != "open" or not isinstance(request.get("id"), str):
            return
        task = asyncio.create_task(
            self._stream(request, client), name=f"stream-{request['id'][:8]}"
        )
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _stream(self, request: dict[str, Any], client: AsyncClient) -> None:
        """Serve one stream, dialed to the replica whose channel asked for it."""
        path = resource_path("nodes", None, self.node, f"tunnel/{request['id']}")
        try:
            async with client.websocket(path) as stream:
                kind = request.get("stream")
                if kind == "push":
                    await stream.send(READY)
                    await self._push(stream, request)
                    return
                if kind == "exec":
                    await stream.send(READY)
                    await self._exec(stream, request)
                    return
                console: Viewer | None = None
                try:
                    if kind == "log":
                        source = self._log_file(request)
                    elif kind == "console":
                        console = await self._consoles.open(
                            str(request.get("vm")), lambda: self._connect(kind, request)
                        )
                    else:
                        reader, writer = await self._connect(kind, request)
                except Refused as refusal:
                    await stream.close(REFUSED, reason_text(str(refusal)))
                    return
                vm = str(request.get("vm"))
                try:
                    await stream.send(READY)
                    self._by_vm.setdefault(vm, set()).add(stream)
                    if kind == "log":
                        await self._send_log(stream, source, request)
                    elif console is not None:
                        await console.serve(stream)
                    else:
                        await relay(stream, reader, writer, _peer(kind, request))
                finally:
                    if console is not None:
                        console.leave()  # also when READY could not be sent
                    self._by_vm.get(vm, set()).discard(stream)
                    if not self._by_vm.get(vm, True):
                        del self._by_vm[vm]
        except Exception as error:  # the client went away, or the controller did
            log.debug("node %s: stream %s ended: %s", self.node, request["id"], error)

    async def _push(self, stream: Any, request: dict[str, Any]) -> None:
        try:
            await serve_push(stream, self.backend, request)
        except PushRefused as error:
            await stream.send(json.dumps({"error": str(error)}).encode() + b"\n")
        await stream.close()

    async def _exec(self, stream: Any, request: dict[str, Any]) -> None:
        vm = str(request.get("vm"))
        self._by_vm.setdefault(vm, set()).add(stream)
        try:
            await serve_exec(stream, self.backend, self.client, request)
        finally:
            self._by_vm.get(vm, set()).discard(stream)
            if not self._by_vm.get(vm, True):
                del self._by_vm[vm]

    async def end_vm(self, vm: str, reason: str) -> None:
        """Close the VM's streams, telling their clients why (the VM was deleted or stopped)."""
        for stream in list(self._by_vm.pop(vm, ())):
            with contextlib.suppress(Exception):
                await stream.close(close_code(410), reason_text(reason))

    async def _connect(
        self, kind: Any, request: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        vm = str(request.get("vm"))
        try:
            if kind == "port":
                return await self.backend.open_port(vm, int(request["port"]))
            if kind == "vnc":
                if not isinstance(self.backend, HasDisplay):
                    raise Refused(f"the {self.backend.name} backend has no VNC display")
                return await self._unix(self.backend.vnc_socket(vm), "VNC display")
            if kind == "console":
                if not isinstance(self.backend, HasConsole):
                    raise Refused(f"the {self.backend.name} backend has no serial console")
                return await self._unix(self.backend.console_socket(vm), "serial console")
        except BackendError as error:
            raise Refused(str(error)) from None
        raise Refused(f"this agent does not serve {kind!r} streams")

    @staticmethod
    async def _unix(path: Path, what: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 10)
        except (OSError, TimeoutError) as error:
            reason = getattr(error, "strerror", None) or "timed out"
            raise Refused(f"the VM's {what} is not available: {reason}") from None

    def _log_file(self, request: dict[str, Any]) -> Path:
        if request.get("source") == "startup":
            if self.startup_log is None:
                raise Refused("this agent keeps no startup script output")
            return self.startup_log(str(request.get("vm")))
        if not isinstance(self.backend, HasSerialLog):
            raise Refused(f"the {self.backend.name} backend keeps no serial console log")
        return self.backend.serial_log(str(request.get("vm")))

    @staticmethod
    async def _send_log(stream: Any, path: Path, request: dict[str, Any]) -> None:
        follow = bool(request.get("follow"))
        tail = request.get("tail")
        position = 0
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            position = max(0, size - int(tail)) if tail else 0
        while True:
            try:
                with path.open("rb") as file:
                    file.seek(position)
                    while chunk := file.read(CHUNK):
                        await stream.send(chunk)  # waits while the far end is slow
                        position += len(chunk)
            except FileNotFoundError:
                if not follow:
                    return
            if not follow:
                await stream.close()
                return
            await asyncio.sleep(FOLLOW_POLL)


def _peer(kind: Any, request: dict[str, Any]) -> str:
    """What a stream is connected to, as its tunnel's close reason names it."""
    if kind == "port":
        return f"the connection to the VM's port {request.get('port')}"
    if kind == "vnc":
        return "the VM's VNC display"
    return "the VM's serial console"
