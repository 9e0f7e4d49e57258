"""The client's end of tunnels (the CLI): dial a VM's port, display or console through the
controller, and carry the bytes to a local listener, to stdin and stdout, or to a terminal."""

import asyncio
import contextlib
import json
import os
import sys
import termios
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shoal.client import connect_websocket, resource_path
from shoal.errors import ApiError, Unavailable, error_from_status
from shoal.tasks import first_of
from shoal.tunnel.protocol import CHUNK, READY, status_of
from shoal.tunnel.relay import relay

Kind = Literal["portforward", "vnc", "console", "exec"]
# Ctrl-] ends `shoal console`, as in telnet.
CONSOLE_ESCAPE = b"\x1d"


@dataclass(frozen=True)
class Endpoint:
    """Where a VM's tunnels are asked for: the server, the caller's token, and the VM."""

    server: str
    token: str
    ca_pem: str | None
    namespace: str
    vm: str


def closed_error(closed: ConnectionClosed, what: str) -> ApiError:
    """The error a tunnel's close stands for, with the reason the far end gave."""
    frame = closed.rcvd
    code = frame.code if frame else 1006
    reason = frame.reason if frame else ""
    status = status_of(code)
    if status is not None:
        return error_from_status(status, {"message": reason})
    return Unavailable(f"{what} closed ({code}){': ' + reason if reason else ''}")


async def dial(endpoint: Endpoint, kind: Kind, port: int | None = None, **params: Any) -> Any:
    """An open tunnel (a websockets connection past its READY frame), or ApiError saying why
    not. params are the stream's other query parameters."""
    path = resource_path("virtualmachines", endpoint.namespace, endpoint.vm, kind)
    what = f"the tunnel to {endpoint.vm}"
    try:
        websocket = await connect_websocket(
            endpoint.server, endpoint.token, endpoint.ca_pem, path, port=port, **params
        )
    except InvalidStatus as refused:
        response = refused.response
        try:
            body = json.loads(response.body or b"{}")
        except ValueError:
            body = {"message": (response.body or b"").decode(errors="replace")}
        raise error_from_status(response.status_code, body) from None
    except (OSError, TimeoutError, InvalidHandshake) as error:
        raise Unavailable(f"cannot reach {endpoint.server}: {error}") from None
    try:
        first = await websocket.recv()
    except ConnectionClosed as closed:
        raise closed_error(closed, what) from None
    if first != READY:
        await websocket.close()
        raise Unavailable(f"{what}: unexpected first frame from the server")
    return websocket


async def serve_port(
    endpoint: Endpoint,
    kind: Kind,
    remote: int | None,
    address: str,
    local: int,
    report: Callable[[str], None],
) -> asyncio.Server:
    """A listener on address:local; each connection gets its own tunnel. A tunnel that fails is
    reported and its connection closed; the listener goes on."""

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            websocket = await dial(endpoint, kind, remote)
        except ApiError as error:
            report(f"connection refused: {error.message}")
            writer.close()
            return
        await relay(websocket, reader, writer, "the local connection")
        closed = websocket.close_code
        if closed is not None and status_of(closed) is not None:
            report(f"tunnel closed: {websocket.close_reason}")

    return await asyncio.start_server(accepted, address, local, limit=CHUNK)


async def _stdio() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout.buffer
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer


async def carry_stdio(endpoint: Endpoint, port: int) -> None:
    """One tunnel on stdin and stdout (for ssh's ProxyCommand). Raises ApiError when the tunnel
    cannot open or ends for a reason (the VM went away, the tunnel idled out)."""
    websocket = await dial(endpoint, "portforward", port)
    try:
        reader, writer = await _stdio()
    except (OSError, ValueError) as error:
        await websocket.close()
        raise Unavailable(
            f"stdin and stdout must be pipes, sockets or a terminal: {error}"
        ) from None
    await relay(websocket, reader, writer, "standard input or output")
    code = websocket.close_code
    if code is not None and status_of(code) is not None:
        raise error_from_status(status_of(code) or 503, {"message": websocket.close_reason})


async def stdin_chunks() -> AsyncIterator[bytes]:
    """What arrives on stdin (a terminal, a pipe or a file), until its end."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        data = os.read(fd, CHUNK)
        if not data:
            loop.remove_reader(fd)
        queue.put_nowait(data)

    loop.add_reader(fd, readable)
    try:
        while data := await queue.get():
            yield data
    finally:
        loop.remove_reader(fd)


async def console(endpoint: Endpoint, notice: Callable[[str], None]) -> None:
    """The VM's serial console on this terminal (raw mode; Ctrl-] ends it)."""
    websocket = await dial(endpoint, "console")
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    if interactive:
        notice(f"connected to the serial console of {endpoint.vm}; Ctrl-] ends it\r")
        tty.setraw(stdin)

    async def typing() -> None:
        async for data in stdin_chunks():
            if interactive and CONSOLE_ESCAPE in data:
                data = data.split(CONSOLE_ESCAPE, 1)[0]
                if data:
                    await websocket.send(data)
                return
            await websocket.send(data)
        if not interactive:  # stdin ended: keep printing until the server closes
            await asyncio.Event().wait()

    async def printing() -> None:
        async for message in websocket:
            if isinstance(message, bytes):
                sys.stdout.buffer.write(message)
                sys.stdout.buffer.flush()

    try:
        await first_of({asyncio.create_task(typing()), asyncio.create_task(printing())})
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(Exception):
            await websocket.close()
    code = websocket.close_code
    if code is not None and status_of(code) is not None:
        raise error_from_status(status_of(code) or 503, {"message": websocket.close_reason})
