"""A read-only core `v1` view of shoal's Events, for `kubectl describe` and `kubectl get events`.

`kubectl describe` lists `/api/v1/namespaces/{namespace}/events` with field selectors on
`involvedObject` to show an object's events. shoal's Events (`shoal.dev/v1`) already have the
core Event's fields; this view serves them as `v1` Events, authorized exactly as the shoal.dev
list and watch of Events are (the same handlers). Writes go through the shoal.dev routes.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse

from shoal import jsoncodec
from shoal.api.kube.tables import (
    TABLE_TYPE,
    IncludeObject,
    list_table,
    table_events,
    table_only,
    wants_table,
)
from shoal.api.routes import (
    AcceptHeader,
    Call,
    CallScope,
    IncludeObjectParam,
    KindHandlers,
    cluster_call,
    namespaced_call,
)
from shoal.errors import NotFound
from shoal.model.registry import BY_KIND

CORE = "v1"


def _as_core(obj: dict[str, Any]) -> dict[str, Any]:
    """A shoal Event as a core one: the same fields, but `source` is an EventSource there."""
    core = {**obj, "apiVersion": CORE}
    if isinstance(obj.get("source"), str):
        core["source"] = {"component": obj["source"]} if obj["source"] else {}
    involved = obj.get("involvedObject")
    if isinstance(involved, dict) and "apiVersion" not in involved:
        core["involvedObject"] = {"apiVersion": "shoal.dev/v1", **involved}
    return core


def core_list(body: bytes) -> bytes:
    listed = jsoncodec.loads(body)
    listed["apiVersion"] = CORE
    listed["items"] = [_as_core(item) for item in listed.get("items") or []]
    return jsoncodec.dumps_bytes(listed)


async def core_events(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in events:
        out = []
        for line in chunk.split(b"\n"):
            if not line:
                continue
            event = jsoncodec.loads(line)
            if event.get("type") != "ERROR":
                event["object"] = _as_core(event["object"])
            out.append(jsoncodec.dumps_bytes(event) + b"\n")
        if out:
            yield b"".join(out)


def core_events_router() -> APIRouter:
    router = APIRouter(tags=["Event"])
    handlers = KindHandlers(BY_KIND["Event"])

    async def list_or_watch(
        call: Call,
        labelSelector: str | None,
        fieldSelector: str | None,
        limit: int | None,
        cont: str | None,
        watch: bool,
        resourceVersion: str | None,
        timeoutSeconds: int | None,
        includeObject: IncludeObject,
        accept: str | None,
    ) -> Response:
        table_only(accept)
        answer = await handlers.list(
            call.ctx, call.caller, call.namespace, labelSelector, fieldSelector, limit, cont,
            watch, resourceVersion, timeoutSeconds,
        )  # fmt: skip
        table = wants_table(accept)
        if isinstance(answer, StreamingResponse):
            stream = cast(AsyncIterator[bytes], answer.body_iterator)
            if table:
                return StreamingResponse(
                    table_events(handlers.info, stream, includeObject, bookmarks=False),
                    media_type=TABLE_TYPE,
                )
            return StreamingResponse(core_events(stream), media_type="application/json")
        if table:
            body = list_table(handlers.info, bytes(answer.body), includeObject)
            return Response(body, media_type=TABLE_TYPE)
        return Response(core_list(bytes(answer.body)), media_type="application/json")

    def endpoint(scope: CallScope) -> Callable[..., Awaitable[Response]]:
        async def list_events(
            call: Annotated[Call, Depends(scope)],
            labelSelector: Annotated[str | None, Query(max_length=4096)] = None,
            fieldSelector: Annotated[str | None, Query(max_length=4096)] = None,
            limit: Annotated[int | None, Query(ge=1, le=10000)] = None,
            continue_: Annotated[str | None, Query(alias="continue", max_length=4096)] = None,
            watch: bool = False,
            resourceVersion: Annotated[str | None, Query(max_length=32)] = None,
            timeoutSeconds: Annotated[int | None, Query(ge=1, le=86400)] = None,
            includeObject: IncludeObjectParam = IncludeObject.metadata,
            accept: AcceptHeader = None,
        ) -> Response:
            return await list_or_watch(
                call, labelSelector, fieldSelector, limit, continue_, watch,
                resourceVersion, timeoutSeconds, includeObject, accept,
            )  # fmt: skip

        return list_events

    router.add_api_route(
        "/api/v1/namespaces/{namespace}/events",
        endpoint(namespaced_call),
        methods=["GET"],
        summary="List or watch a namespace's Events as core v1 Events (kubectl describe)",
    )
    router.add_api_route(
        "/api/v1/events",
        endpoint(cluster_call),
        methods=["GET"],
        summary="List or watch every namespace's Events as core v1 Events",
    )

    @router.api_route(
        "/api/v1/{rest:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    def not_served(rest: str) -> Response:
        """The rest of the core API (Pods, Services, ...): a 404 that says what to use instead,
        since `kubectl logs|exec|port-forward|attach` look for Pods."""
        resource = (
            rest.split("/")[2]
            if rest.startswith("namespaces/") and rest.count("/") >= 2
            else rest.split("/")[0]
        )
        raise NotFound(
            f"shoal serves no {resource} (of the core API it has only events): for a VM, use "
            "`kubectl shoal logs|exec|ssh|port-forward|console NAME`"
        )

    return router
