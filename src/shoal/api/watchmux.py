"""Many watches over one WebSocket: what a browser tab uses, since a page shows several kinds at
once and a browser opens at most six connections to a host.

WebSocket /apis/shoal.dev/v1/watch. The client sends text frames, each one JSON object:

    {"op": "watch", "id": "vms", "resource": "virtualmachines", "namespace": "team-a",
     "labelSelector": "...", "fieldSelector": "...", "resourceVersion": "42"}
    {"op": "cancel", "id": "vms"}

and gets the events the list route's `?watch=1` would send, one per text frame, tagged with the
watch's id: {"id": "vms", "type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": ...}.
Each watch is authorized as that route authorizes it (verb `watch`); a refused or malformed one
is answered with an ERROR event carrying the Status (403, 410, 400...) and the others go on. An
ERROR ends its watch: after a 410 the client lists again and watches from the list's version.
"""

import asyncio
import contextlib
import logging
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shoal.api.auth import Principal, authenticate, websocket_protocol
from shoal.api.context import ApiContext
from shoal.api.listing import make_query
from shoal.api.routes import NAME_PATTERN, PREFIX, KindHandlers
from shoal.errors import ApiError, BadRequest, Unavailable
from shoal.model.registry import KINDS
from shoal.tasks import first_of

log = logging.getLogger(__name__)
MAX_WATCHES = 32
QUEUE_FRAMES = 1024
WatchId = Annotated[str, Field(min_length=1, max_length=64)]


class WatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: Literal["watch"]
    id: WatchId
    resource: Annotated[str, Field(max_length=63)]
    namespace: Annotated[str, Field(max_length=63, pattern=NAME_PATTERN)] | None = None
    labelSelector: Annotated[str, Field(max_length=4096)] | None = None
    fieldSelector: Annotated[str, Field(max_length=4096)] | None = None
    resourceVersion: Annotated[str, Field(max_length=32)] | None = None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: Literal["cancel"]
    id: WatchId


Request = Annotated[WatchRequest | CancelRequest, Field(discriminator="op")]
REQUEST = TypeAdapter(Request)
HANDLERS = {info.plural: KindHandlers(info) for info in KINDS}


def _frame(watch_id: str | None, line: bytes) -> str:
    """An event line `{"type":...}` as the frame `{"id":...,"type":...}`, without parsing it."""
    return (b'{"id":' + orjson.dumps(watch_id) + b"," + line.strip()[1:]).decode()


def _error_frame(watch_id: str | None, error: ApiError) -> str:
    return orjson.dumps({"id": watch_id, "type": "ERROR", "object": error.status()}).decode()


class Session:
    """One client's watches and the one writer that sends their events in turn."""

    def __init__(self, socket: WebSocket, ctx: ApiContext, caller: Principal) -> None:
        self.socket = socket
        self.ctx = ctx
        self.caller = caller
        self.outbox: asyncio.Queue[str] = asyncio.Queue(QUEUE_FRAMES)
        self.watches: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Until the client goes, or can no longer be written to (its watches go with it)."""
        try:
            await first_of({asyncio.create_task(self._read()), asyncio.create_task(self._write())})
        finally:
            watches = list(self.watches.values())
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def _read(self) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await self.socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:  # a binary frame: answered like any malformed one
                    binary = BadRequest("bad request: frames are JSON text, not binary")
                    await self.outbox.put(_error_frame(None, binary))
                    continue
                if not await asyncio.to_thread(self._still_valid):
                    await self.socket.close(4401, "the token is invalid, expired or revoked")
                    return
                await self._handle(text)

    def _still_valid(self) -> bool:
        """Whether the token the session opened with still stands (revoked or expired: no new
        watch is started with it)."""
        try:
            return authenticate(self.socket) == self.caller
        except ApiError:
            return False

    async def _write(self) -> None:
        while True:
            await self.socket.send_text(await self.outbox.get())

    async def _handle(self, text: str) -> None:
        try:
            request = REQUEST.validate_json(text)
        except ValidationError as error:
            problem = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                for e in error.errors()
            )
            await self.outbox.put(_error_frame(None, BadRequest(f"bad request: {problem}")))
            return
        previous = self.watches.pop(request.id, None)
        if previous is not None:
            previous.cancel()
            with contextlib.suppress(BaseException):
                await previous
        if isinstance(request, CancelRequest):
            return
        if len(self.watches) >= MAX_WATCHES:
            too_many = BadRequest(f"at most {MAX_WATCHES} watches per connection")
            await self.outbox.put(_error_frame(request.id, too_many))
            return
        self.watches[request.id] = asyncio.create_task(self._watch(request))

    async def _watch(self, request: WatchRequest) -> None:
        try:
            handlers = HANDLERS.get(request.resource)
            if handlers is None:
                raise BadRequest(f"resource: no resource named {request.resource!r}")
            namespace = request.namespace if handlers.info.namespaced else None
            if request.namespace and not handlers.info.namespaced:
                raise BadRequest(f"resource: {request.resource} are not namespaced")
            query = make_query(
                handlers.info, namespace, request.labelSelector, request.fieldSelector
            )
            start = await asyncio.to_thread(
                handlers.start_watch,
                self.ctx,
                self.caller,
                namespace,
                query,
                request.resourceVersion,
            )
            async for chunk in handlers.watch(self.ctx, query, start):
                for line in chunk.splitlines():
                    if line:
                        await self.outbox.put(_frame(request.id, line))
        except ApiError as error:
            await self.outbox.put(_error_frame(request.id, error))
        except Exception as error:  # the store failing under a watch: say so, and end it
            log.exception("watch %s of %s failed", request.id, request.resource)
            failed = Unavailable(f"the watch failed: {type(error).__name__}: {error}")
            await self.outbox.put(_error_frame(request.id, failed))
        finally:
            if self.watches.get(request.id) is asyncio.current_task():
                del self.watches[request.id]


def watch_mux_router() -> APIRouter:
    router = APIRouter()

    @router.websocket(f"{PREFIX}/watch")
    async def watch_many(socket: WebSocket) -> None:
        """Many watches over one WebSocket, each authorized as its list route's watch
        (see shoal.api.watchmux for the frames)."""
        ctx = socket.app.state.ctx
        try:
            caller = await asyncio.to_thread(authenticate, socket)
        except ApiError as error:
            await socket.send_denial_response(JSONResponse(error.status(), status_code=error.code))
            return
        await socket.accept(subprotocol=websocket_protocol(socket))
        await Session(socket, ctx, caller).run()

    return router
