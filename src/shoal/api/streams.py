"""Routes that carry bytes from an agent: its tunnel channels, and a VM's serial log.

- WebSocket /apis/shoal.dev/v1/nodes/{name}/tunnel: an agent's control channel (node credential).
- WebSocket /apis/shoal.dev/v1/nodes/{name}/tunnel/{stream}: a stream an agent opens on request.
- GET .../namespaces/{ns}/virtualmachines/{name}/log[?follow=true&tailBytes=N]: the VM's serial
  console log, streamed from its node.
- WebSocket .../namespaces/{ns}/virtualmachines/{name}/portforward?port=N: a byte tunnel to the
  VM's TCP port N; .../vnc to its display (RFB); .../console to its serial console. These need
  the `connect` verb (roles connect, edit, admin); so does .../exec?command=..., a command run in
  the guest with its stdin, stdout, stderr and exit code (shoal.tunnel.execframes). A tunnel that cannot open is refused in the
  handshake with a Status body; once open, the agent's READY frame is the first one the client
  gets (see shoal.tunnel.protocol).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shoal.api.auth import Principal, authenticate, authorize, websocket_protocol
from shoal.api.context import ApiContext
from shoal.api.docs import ERRORS
from shoal.api.routes import PREFIX, Caller, Ctx, NameParam, NamespaceParam
from shoal.errors import ApiError, BadRequest, Conflict, Forbidden, Unavailable
from shoal.images.errors import InvalidReference
from shoal.images.reference import parse
from shoal.tunnel.protocol import READY, REFUSED
from shoal.tunnel.splice import splice

MAX_TAIL = 64 * 2**20


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: Annotated[str, Field(min_length=1, max_length=512)]

    @field_validator("reference")
    @classmethod
    def _a_reference(cls, value: str) -> str:
        """Refused here, before the node pauses the guest and reads its disk."""
        try:
            parse(value)
        except InvalidReference as error:
            raise ValueError(str(error)) from None
        return value

    # Registry credentials for the node to use; without them it uses its own logins.
    username: Annotated[str, Field(max_length=256)] | None = None
    password: Annotated[str, Field(max_length=4096)] | None = None
    insecure: bool = False


def _ctx(socket: WebSocket) -> ApiContext:
    ctx = socket.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx


async def _authenticated_node(socket: WebSocket, node: str) -> bool:
    """Only the node's own credential (or the admin) may speak for its agent."""
    try:
        caller: Principal = authenticate(socket)
        if not (caller.cluster_admin or (caller.kind == "Node" and caller.name == node)):
            raise Forbidden(f"{caller} may not serve tunnels for node {node}")
    except ApiError as error:
        await socket.close(code=4000 + error.code, reason=error.message[:120])
        return False
    return True


async def accepted(source: WebSocket) -> None:
    """Wait for the agent's first frame: a text frame when it serves the stream, a close with a
    reason when it cannot (which becomes the client's error)."""
    message = await source.receive()
    if message["type"] == "websocket.disconnect":
        code = int(message.get("code") or 1000)
        reason = str(message.get("reason") or "")
        if code == REFUSED:
            raise Conflict(reason or "the agent refused the stream")
        raise Unavailable(f"the agent closed the stream ({code}) {reason}".strip())


async def _open_vm_stream(
    socket: WebSocket,
    namespace: str,
    name: str,
    request: dict[str, object],
    phases: tuple[str, ...] = ("Running", "Starting", "Suspended"),
) -> tuple[str, WebSocket]:
    """Authorize the caller for `connect` on the VM, then have its node's agent open the stream.
    Raises ApiError before any byte reaches the VM when anything is wrong."""
    ctx = _ctx(socket)
    caller = await asyncio.to_thread(authenticate, socket)
    await asyncio.to_thread(
        authorize,
        ctx.store,
        caller,
        "connect",
        "VirtualMachine",
        namespace,
        plural="virtualmachines",
    )
    vm = await asyncio.to_thread(ctx.store.get, "VirtualMachine", namespace, name)
    node = vm["spec"].get("nodeName")
    if not node:
        raise Conflict(f"VirtualMachine {name} is not on a node yet")
    phase = (vm.get("status") or {}).get("phase")
    if phase not in phases:
        raise Conflict(f"VirtualMachine {name} is {phase or 'Pending'}, not running")
    if request.get("stream") == "exec":  # the agent logs in with the VM's access and env
        request = {**request, "namespace": namespace, "name": name, "spec": vm["spec"]}
    source = await ctx.broker.open(node, {"vm": vm["metadata"]["uid"], **request})
    try:
        await accepted(source)
    except BaseException:
        await _finish(source)
        raise
    return node, source


async def _serve_tunnel(
    socket: WebSocket,
    namespace: str,
    name: str,
    request: dict[str, object],
    phases: tuple[str, ...] = ("Running", "Starting", "Suspended"),
) -> None:
    try:
        node, source = await _open_vm_stream(socket, namespace, name, request, phases)
    except ApiError as error:
        await socket.send_denial_response(JSONResponse(error.status(), status_code=error.code))
        return
    metrics = _ctx(socket).metrics
    kind = str(request.get("stream"))
    counts = (
        metrics.tunnel_bytes.labels(kind, "to-guest").inc,
        metrics.tunnel_bytes.labels(kind, "to-client").inc,
    )
    try:
        await socket.accept(subprotocol=websocket_protocol(socket))
        await socket.send_text(READY)
        with metrics.tunnels_open.labels(kind).track_inprogress():
            await splice(
                socket,
                source,
                node=node,
                idle_timeout=_ctx(socket).tunnel_idle_timeout,
                counts=counts,
            )
    finally:
        await _finish(source)


async def pump(source: WebSocket) -> AsyncIterator[bytes]:
    """The binary messages of a stream until it closes."""
    while True:
        message = await source.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data:
            yield data


def streams_router() -> APIRouter:
    router = APIRouter()

    @router.websocket(f"{PREFIX}/nodes/{{name}}/tunnel")
    async def agent_channel(socket: WebSocket, name: str) -> None:
        """An agent's control channel (node credential): stream requests come down it."""
        if not await _authenticated_node(socket, name):
            return
        await socket.accept()
        await _ctx(socket).broker.serve_agent(name, socket)

    @router.websocket(f"{PREFIX}/nodes/{{name}}/tunnel/{{stream}}")
    async def agent_stream(socket: WebSocket, name: str, stream: str) -> None:
        """A stream an agent opens on request, paired with the client that asked for it."""
        if not await _authenticated_node(socket, name):
            return
        waiter = _ctx(socket).broker.accept_stream(name, stream)
        if waiter is None:
            await socket.close(code=4404, reason="no client waits for this stream")
            return
        await socket.accept()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        socket.state.done = done
        waiter.set_result(socket)
        # The client's handler reads and closes this socket; keep the ASGI call alive meanwhile.
        with contextlib.suppress(WebSocketDisconnect):
            await done

    @router.get(
        f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/log",
        tags=["VirtualMachine"],
        summary="Stream a VM's serial console log from its node",
        response_class=StreamingResponse,
        responses={**ERRORS, 200: {"content": {"text/plain": {}}}},
    )
    async def vm_log(
        ctx: Ctx,
        caller: Caller,
        namespace: NamespaceParam,
        name: NameParam,
        follow: Annotated[bool, Query(description="Keep streaming what the guest prints.")] = False,
        tailBytes: Annotated[
            int | None, Query(ge=1, le=MAX_TAIL, description="Only the last N bytes.")
        ] = None,
        source: Annotated[
            Literal["serial", "startup"],
            Query(description="serial: the serial console; startup: the startup script's output."),
        ] = "serial",
    ) -> StreamingResponse:
        authorize(ctx.store, caller, "get", "VirtualMachine", namespace, plural="virtualmachines")
        vm = await asyncio.to_thread(ctx.store.get, "VirtualMachine", namespace, name)
        node = vm["spec"].get("nodeName")
        if not node:
            raise Conflict(f"VirtualMachine {name} is not on a node yet: it has no log")
        request = {
            "stream": "log",
            "vm": vm["metadata"]["uid"],
            "follow": follow,
            "tail": tailBytes,
            "source": source,
        }
        return await _relayed(ctx, node, request, "text/plain; charset=utf-8")

    @router.post(
        f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/push",
        tags=["VirtualMachine"],
        summary="Push a VM's disk to an OCI registry as a shoal image, streaming progress",
        response_class=StreamingResponse,
        responses={**ERRORS, 200: {"content": {"application/x-ndjson": {}}}},
    )
    async def vm_push(
        ctx: Ctx,
        caller: Caller,
        namespace: NamespaceParam,
        name: NameParam,
        body: PushRequest,
    ) -> StreamingResponse:
        """The VM's node reads its disk (pausing a running guest meanwhile) and pushes it.
        The body streams JSON lines: {"phase", "done", "total"} while it works, then
        {"digest", "reference", ...}, or {"error"}."""
        authorize(
            ctx.store, caller, "action", "VirtualMachine", namespace, plural="virtualmachines"
        )
        vm = await asyncio.to_thread(ctx.store.get, "VirtualMachine", namespace, name)
        node = vm["spec"].get("nodeName")
        if not node:
            raise Conflict(f"VirtualMachine {name} is not on a node yet: it has no disk")
        request = {"stream": "push", "vm": vm["metadata"]["uid"], **body.model_dump()}
        return await _relayed(ctx, node, request, "application/x-ndjson")

    @router.websocket(f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/portforward")
    async def vm_port_forward(
        socket: WebSocket, namespace: str, name: str, port: str | None = None
    ) -> None:
        """A byte tunnel to one TCP port of the VM (`shoal port-forward`, `shoal ssh`)."""
        if port is None or not port.isdigit() or not 1 <= int(port) <= 65535:
            error = BadRequest(f"port must be a TCP port number (1-65535), got {port!r}")
            await socket.send_denial_response(JSONResponse(error.status(), status_code=400))
            return
        await _serve_tunnel(socket, namespace, name, {"stream": "port", "port": int(port)})

    @router.websocket(f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/exec")
    async def vm_exec(
        socket: WebSocket,
        namespace: str,
        name: str,
        stdin: bool = False,
        tty: bool = False,
        width: int = 80,
        height: int = 24,
    ) -> None:
        """Run a command in the guest (`shoal exec`): `command` repeated once per argument;
        stdin, stdout, stderr, resize and the exit status travel as exec frames
        (shoal.tunnel.execframes). Needs `connect` on the VM, which must be Running."""
        command = socket.query_params.getlist("command")
        problem = None
        if not command or any(len(part) > 65536 for part in command):
            problem = "command: give the command as one or more command= parameters"
        elif not (1 <= width <= 10000 and 1 <= height <= 10000):
            problem = f"width and height must be 1-10000, got {width}x{height}"
        if problem:
            error = BadRequest(problem)
            await socket.send_denial_response(JSONResponse(error.status(), status_code=400))
            return
        request: dict[str, object] = {
            "stream": "exec",
            "command": command,
            "stdin": stdin,
            "tty": tty,
            "width": width,
            "height": height,
        }
        await _serve_tunnel(socket, namespace, name, request, phases=("Running",))

    @router.websocket(f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/vnc")
    async def vm_vnc(socket: WebSocket, namespace: str, name: str) -> None:
        """The VM's display as an RFB (VNC) byte stream (`shoal vnc`, the web UI)."""
        await _serve_tunnel(socket, namespace, name, {"stream": "vnc"})

    @router.websocket(f"{PREFIX}/namespaces/{{namespace}}/virtualmachines/{{name}}/console")
    async def vm_console(socket: WebSocket, namespace: str, name: str) -> None:
        """The VM's serial console, both ways (`shoal console`)."""
        await _serve_tunnel(socket, namespace, name, {"stream": "console"})

    return router


async def _relayed(
    ctx: ApiContext, node: str, request: dict[str, object], media_type: str
) -> StreamingResponse:
    """An HTTP response whose body is what the node's agent sends on a stream it opens."""
    source = await ctx.broker.open(node, request)
    try:
        await accepted(source)
    except BaseException:
        await _finish(source)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in pump(source):
                yield chunk
        finally:
            await _finish(source)

    return StreamingResponse(body(), media_type=media_type)


async def _finish(source: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await source.close()
    done = getattr(source.state, "done", None)
    if done is not None and not done.done():
        done.set_result(None)
