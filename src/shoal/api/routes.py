"""The REST routes of every kind, generated from the registry so every kind behaves alike.

Every handler authorizes first, then does its store work in one transaction (objects.Objects).
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from shoal import jsoncodec
from shoal.api import listing
from shoal.api.auth import Principal, authenticate, authorize, bearer
from shoal.api.context import ApiContext, get_ctx
from shoal.api.docs import ERRORS, list_model
from shoal.api.kube.tables import (
    TABLE_TYPE,
    IncludeObject,
    list_table,
    object_table,
    table_events,
    table_only,
    wants_table,
)
from shoal.api.listing import (
    list_page,
    list_response,
    make_query,
    parse_resource_version,
    watch,
    watch_start,
)
from shoal.errors import BadRequest, Forbidden, UnsupportedMediaType
from shoal.model.registry import KINDS, KindInfo
from shoal.store import events
from shoal.store.sealing import SEALED_KINDS
from shoal.store.store import Obj

PREFIX = "/apis/shoal.dev/v1"
IncludeObjectParam = Annotated[
    IncludeObject,
    Query(description="With a Table answer: what each row carries of its object (as Kubernetes)."),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]
FieldValidation = Annotated[
    str | None,
    Query(
        max_length=16,
        description="Strict, Warn or Ignore: shoal always validates strictly (a body with fields "
        "its kind does not have is refused, 422), which none of them forbids.",
    ),
]
DryRun = Annotated[
    str | None,
    Query(max_length=16, description="Not supported: any value is refused (400)."),
]
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NamespaceParam = Annotated[
    str, Path(min_length=1, max_length=63, pattern=NAME_PATTERN, description="a namespace")
]
NameParam = Annotated[
    str, Path(min_length=1, max_length=63, pattern=NAME_PATTERN, description="an object's name")
]


# Dependencies are coroutines: FastAPI runs a plain-function dependency in a worker thread, and a
# hop to a thread and back costs more than any of these does.
async def context(request: Request) -> ApiContext:
    return get_ctx(request)


async def caller(request: Request) -> Principal:
    """The authenticated caller, from the tokens the controller read in the last few seconds; the
    database is asked (in a worker thread) only when those cannot tell."""
    if get_ctx(request).tokens.cached(bearer(request)) is None:
        return await run_in_threadpool(authenticate, request)
    return authenticate(request)


Ctx = Annotated[ApiContext, Depends(context)]
Caller = Annotated[Principal, Depends(caller)]


@dataclass(frozen=True)
class Call:
    """What every route of a kind needs, as one dependency (FastAPI solves each dependency of
    every request anew): the context, the caller, and the namespace (None: cluster scope)."""

    ctx: ApiContext
    caller: Principal
    namespace: str | None


async def cluster_call(request: Request) -> Call:
    """Cluster scope: cluster-scoped kinds, and namespaced kinds across all namespaces."""
    return Call(get_ctx(request), await caller(request), None)


async def namespaced_call(request: Request, namespace: NamespaceParam) -> Call:
    """A namespaced route: the namespace is in its path."""
    return Call(get_ctx(request), await caller(request), namespace)


CallScope = Callable[..., Awaitable[Call]]

MERGE_PATCH = {
    "requestBody": {
        "required": True,
        "content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


def ok(obj: Obj, code: int = 200) -> Response:
    return Response(jsoncodec.dumps_bytes(obj), status_code=code, media_type="application/json")


def ok_stored(body: str | bytes) -> Response:
    """An answer that is already JSON text (as stored), sent without parsing it again."""
    content = body.encode() if isinstance(body, str) else body
    return Response(content, media_type="application/json")


def audit(ctx: ApiContext, caller: Principal, obj: Obj, reason: str) -> None:
    """Every mutation by a person or a tool leaves an Event; agents' status writes do not."""
    if caller.kind == "Node" or obj["kind"] == "Event":
        return
    events.record(ctx.store, obj, reason, f"{reason} by {caller}", source="api")


def _node_owned(
    ctx: ApiContext, caller: Principal, info: KindInfo, ns: str | None, name: str
) -> Obj | None:
    """For node credentials, the object they act on (their rights depend on it)."""
    if caller.kind != "Node":
        return None
    if info.kind == "Node":  # a node's rights on Nodes depend on the name alone
        return {"metadata": {"name": name}}
    if info.kind in SEALED_KINDS:  # decided by the VMs bound to the node, not by the Secret
        return {"kind": info.kind, "metadata": {"name": name, "namespace": ns}}
    return ctx.store.get(info.kind, ns or "", name)


class KindHandlers:
    """The handlers of one kind, with the namespace as a plain argument (None: cluster scope)."""

    def __init__(self, info: KindInfo) -> None:
        self.info = info
        # Secrets are stored sealed: the text fast paths (stored JSON sent as it is) open them.
        self.sealed = info.kind in SEALED_KINDS

    def authorize(
        self,
        ctx: ApiContext,
        caller: Principal,
        verb: str,
        namespace: str | None,
        *,
        name: str | None = None,
        node_scope: str | None = None,
        obj: Obj | None = None,
    ) -> None:
        if obj is None and name is not None:
            obj = _node_owned(ctx, caller, self.info, namespace, name)
        authorize(
            ctx.store,
            caller,
            verb,
            self.info.kind,
            namespace,
            plural=self.info.plural,
            node_scope=node_scope,
            obj=obj,
        )

    async def list(
        self,
        ctx: ApiContext,
        caller: Principal,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        limit: int | None,
        cont: str | None,
        watch_: bool,
        resource_version: str | None,
        timeout_seconds: int | None,
    ) -> Response:
        query = make_query(self.info, namespace, label_selector, field_selector)
        if not watch_:
            return ok_stored(
                await run_in_threadpool(self._list, ctx, caller, namespace, query, limit, cont)
            )
        start = await run_in_threadpool(
            self.start_watch, ctx, caller, namespace, query, resource_version
        )
        stream = self.watch(ctx, query, start, float(timeout_seconds) if timeout_seconds else None)
        return StreamingResponse(stream, media_type="application/x-ndjson")

    def watch(
        self,
        ctx: ApiContext,
        query: listing.Query,
        start: listing.Page | int,
        timeout: float | None = None,
    ) -> AsyncIterator[bytes]:
        """The watch events (newline-terminated JSON) from start, which start_watch gave."""
        kind = self.info.kind
        return watch(
            ctx.hub,
            query,
            start,
            timeout=timeout,
            bookmark_interval=ctx.bookmark_interval,
            reveal=(lambda text: ctx.store.open_text(kind, text)) if self.sealed else None,
        )

    def _list(
        self,
        ctx: ApiContext,
        caller: Principal,
        namespace: str | None,
        query: listing.Query,
        limit: int | None,
        cont: str | None,
    ) -> bytes:
        self.authorize(ctx, caller, "list", namespace, node_scope=query.node_name)
        page = list_page(ctx.store, query, limit, cont, ctx.hub.cache)
        return list_response(self.info, self._opened(ctx, page))

    def _opened(self, ctx: ApiContext, page: listing.Page) -> listing.Page:
        if not self.sealed:
            return page
        return replace(page, bodies=[ctx.store.open_text(self.info.kind, b) for b in page.bodies])

    def start_watch(
        self,
        ctx: ApiContext,
        caller: Principal,
        namespace: str | None,
        query: listing.Query,
        resource_version: str | None,
    ) -> listing.Page | int:
        self.authorize(ctx, caller, "watch", namespace, node_scope=query.node_name)
        start = watch_start(
            ctx.store, query, parse_resource_version(resource_version), ctx.hub.cache
        )
        return self._opened(ctx, start) if isinstance(start, listing.Page) else start

    def get(self, ctx: ApiContext, caller: Principal, namespace: str | None, name: str) -> Response:
        self.authorize(ctx, caller, "get", namespace, name=name)
        body = ctx.store.get_body(self.info.kind, namespace or "", name)
        return ok_stored(ctx.store.open_text(self.info.kind, body) if self.sealed else body)

    def create(
        self, ctx: ApiContext, caller: Principal, namespace: str | None, body: BaseModel
    ) -> Response:
        self.authorize(ctx, caller, "create", namespace, obj=body.model_dump(mode="json"))
        created = ctx.objects.create(self.info, namespace, body)
        audit(ctx, caller, created, "Created")
        return ok(created, 201)

    def replace(
        self, ctx: ApiContext, caller: Principal, namespace: str | None, name: str, body: BaseModel
    ) -> Response:
        self.authorize(ctx, caller, "update", namespace, name=name)
        updated = ctx.objects.replace(self.info, namespace, name, body)
        audit(ctx, caller, updated, "Updated")
        return ok(updated)

    def patch(
        self, ctx: ApiContext, caller: Principal, namespace: str | None, name: str, body: Any
    ) -> Response:
        self.authorize(ctx, caller, "patch", namespace, name=name)
        if caller.kind == "Node" and self.info.kind != "Node" and set(body or {}) - {"metadata"}:
            raise Forbidden(f"{caller} may only patch the metadata of a {self.info.kind}")
        updated = ctx.objects.patch(self.info, namespace, name, body)
        audit(ctx, caller, updated, "Updated")
        return ok(updated)

    def delete(
        self,
        ctx: ApiContext,
        caller: Principal,
        namespace: str | None,
        name: str,
        resource_version: str | None,
    ) -> Response:
        self.authorize(ctx, caller, "delete", namespace, name=name)
        obj, _gone = ctx.objects.delete(self.info, namespace, name, expect_rv=resource_version)
        audit(ctx, caller, obj, "Deleted")
        return ok(obj)

    def write_status(
        self,
        ctx: ApiContext,
        caller: Principal,
        namespace: str | None,
        name: str,
        body: Any,
        is_patch: bool,
    ) -> Response:
        self.authorize(ctx, caller, "status", namespace, name=name)
        return ok(ctx.objects.write_status(self.info, namespace, name, body, is_patch=is_patch))


def add_list_route(
    router: APIRouter, handlers: KindHandlers, path: str, scope: CallScope, **doc: Any
) -> None:
    async def list_or_watch(
        call: Annotated[Call, Depends(scope)],
        labelSelector: Annotated[str | None, Query(max_length=4096)] = None,
        fieldSelector: Annotated[str | None, Query(max_length=4096)] = None,
        limit: Annotated[int | None, Query(ge=1, le=10000)] = None,
        continue_: Annotated[str | None, Query(alias="continue", max_length=4096)] = None,
        watch_: Annotated[bool, Query(alias="watch")] = False,
        resourceVersion: Annotated[str | None, Query(max_length=32)] = None,
        timeoutSeconds: Annotated[int | None, Query(ge=1, le=86400)] = None,
        includeObject: IncludeObjectParam = IncludeObject.metadata,
        allowWatchBookmarks: Annotated[bool | None, Query()] = None,
        accept: AcceptHeader = None,
    ) -> Response:
        table_only(accept)
        answer = await handlers.list(
            call.ctx,
            call.caller,
            call.namespace,
            labelSelector,
            fieldSelector,
            limit,
            continue_,
            watch_,
            resourceVersion,
            timeoutSeconds,
        )
        if not wants_table(accept):
            return answer
        if isinstance(answer, StreamingResponse):
            # Without allowWatchBookmarks, kubectl is not sent the bookmarks shoal's own clients
            # rely on (they ask for JSON, and always get them).
            events = table_events(
                handlers.info,
                cast(AsyncIterator[bytes], answer.body_iterator),
                includeObject,
                bool(allowWatchBookmarks),
                call.ctx.store,
            )
            return StreamingResponse(events, media_type=TABLE_TYPE)
        return Response(
            list_table(handlers.info, bytes(answer.body), includeObject, call.ctx.store),
            media_type=TABLE_TYPE,
        )

    router.add_api_route(path, list_or_watch, methods=["GET"], name=f"list_{path}", **doc)


def add_kind_routes(router: APIRouter, info: KindInfo) -> None:
    """Every route of one kind. Namespaced and cluster-scoped kinds share the handlers; only the
    dependency that yields the namespace (with the context and the caller) differs."""
    handlers = KindHandlers(info)
    model: Any = info.model
    tags: list[str | Enum] = [info.kind]
    one = {200: {"model": model, "description": f"the {info.kind}"}, **ERRORS}
    many = {
        200: {
            "model": list_model(info),
            "description": f"a {info.kind}List, or with watch=1 a stream of watch events",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **ERRORS,
    }
    scope: CallScope = namespaced_call if info.namespaced else cluster_call
    Scoped = Annotated[Call, Depends(scope)]
    collection = (
        f"{PREFIX}/namespaces/{{namespace}}/{info.plural}"
        if info.namespaced
        else f"{PREFIX}/{info.plural}"
    )
    item = collection + "/{name}"

    add_list_route(
        router,
        handlers,
        collection,
        scope,
        tags=tags,
        responses=many,
        summary=f"List or watch {info.plural}",
    )
    if info.namespaced:
        add_list_route(
            router,
            handlers,
            f"{PREFIX}/{info.plural}",
            cluster_call,
            tags=tags,
            responses=many,
            summary=f"List or watch {info.plural} in all namespaces",
        )

    @router.post(
        collection,
        tags=tags,
        status_code=201,
        responses={201: one[200], **ERRORS},
        summary=f"Create a {info.kind}",
    )
    def create(
        call: Scoped,
        body: Annotated[model, Body()],
        fieldValidation: FieldValidation = None,
        dryRun: DryRun = None,
    ) -> Response:
        check_write_options(fieldValidation, dryRun)
        return handlers.create(call.ctx, call.caller, call.namespace, body)

    @router.get(item, tags=tags, responses=one, summary=f"Read a {info.kind}")
    def get(
        call: Scoped,
        name: NameParam,
        includeObject: IncludeObjectParam = IncludeObject.metadata,
        accept: AcceptHeader = None,
    ) -> Response:
        """The object; with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, a one-row
        Table of the `shoal ... list` columns (what `kubectl get KIND NAME` prints)."""
        table_only(accept)
        answer = handlers.get(call.ctx, call.caller, call.namespace, name)
        if not wants_table(accept):
            return answer
        return Response(
            object_table(info, bytes(answer.body), includeObject, call.ctx.store),
            media_type=TABLE_TYPE,
        )

    @router.put(item, tags=tags, responses=one, summary=f"Replace a {info.kind}")
    def replace(
        call: Scoped,
        name: NameParam,
        body: Annotated[model, Body()],
        fieldValidation: FieldValidation = None,
        dryRun: DryRun = None,
    ) -> Response:
        check_write_options(fieldValidation, dryRun)
        return handlers.replace(call.ctx, call.caller, call.namespace, name, body)

    @router.patch(
        item,
        tags=tags,
        responses=one,
        openapi_extra=MERGE_PATCH,
        summary=f"Patch a {info.kind} (JSON merge patch)",
    )
    async def patch(
        request: Request,
        call: Scoped,
        name: NameParam,
        fieldValidation: FieldValidation = None,
        dryRun: DryRun = None,
    ) -> Response:
        check_write_options(fieldValidation, dryRun)
        body = await read_patch(request)
        return await run_in_threadpool(
            handlers.patch, call.ctx, call.caller, call.namespace, name, body
        )

    @router.delete(item, tags=tags, responses=one, summary=f"Delete a {info.kind}")
    def delete(
        call: Scoped,
        name: NameParam,
        resourceVersion: Annotated[str | None, Query(max_length=32)] = None,
        dryRun: DryRun = None,
    ) -> Response:
        check_write_options(None, dryRun)
        return handlers.delete(call.ctx, call.caller, call.namespace, name, resourceVersion)

    if not info.has_status:
        return

    @router.get(item + "/status", tags=tags, responses=one, summary=f"Read a {info.kind}'s status")
    def get_status(call: Scoped, name: NameParam) -> Response:
        return handlers.get(call.ctx, call.caller, call.namespace, name)

    @router.put(
        item + "/status", tags=tags, responses=one, summary=f"Replace a {info.kind}'s status"
    )
    def put_status(
        call: Scoped,
        name: NameParam,
        body: Annotated[model, Body()],
        fieldValidation: FieldValidation = None,
        dryRun: DryRun = None,
    ) -> Response:
        check_write_options(fieldValidation, dryRun)
        dumped = body.model_dump(mode="json", exclude_none=True)
        return handlers.write_status(call.ctx, call.caller, call.namespace, name, dumped, False)

    @router.patch(
        item + "/status",
        tags=tags,
        responses=one,
        openapi_extra=MERGE_PATCH,
        summary=f"Patch a {info.kind}'s status",
    )
    async def patch_status(
        request: Request,
        call: Scoped,
        name: NameParam,
        fieldValidation: FieldValidation = None,
        dryRun: DryRun = None,
    ) -> Response:
        check_write_options(fieldValidation, dryRun)
        body = await read_patch(request)
        return await run_in_threadpool(
            handlers.write_status, call.ctx, call.caller, call.namespace, name, body, True
        )


MERGE_TYPES = ("application/merge-patch+json", "application/json", "")
PATCH_HINTS = {
    "application/apply-patch+yaml": "server-side apply is not supported: use client-side "
    "`kubectl apply` (without --server-side), which sends a JSON merge patch",
    "application/apply-patch+cbor": "server-side apply is not supported: use client-side "
    "`kubectl apply` (without --server-side), which sends a JSON merge patch",
    "application/strategic-merge-patch+json": "strategic merge patches are for Kubernetes' "
    "built-in types: send a JSON merge patch (`kubectl patch --type merge`)",
    "application/json-patch+json": "JSON patches (RFC 6902) are not supported: send a JSON "
    "merge patch (`kubectl patch --type merge`)",
}


async def read_patch(request: Request) -> Any:
    """A PATCH body: a JSON merge patch (RFC 7396). Other patch types get 415 with what to use."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in MERGE_TYPES:
        raise UnsupportedMediaType(
            PATCH_HINTS.get(
                media_type,
                f"{media_type} is not a patch type shoal takes: send application/merge-patch+json",
            )
        )
    return await read_json(request)


def check_write_options(field_validation: str | None, dry_run: str | None) -> None:
    """fieldValidation: shoal always validates strictly (unknown fields are refused, 422), which
    satisfies Strict and is stricter than Warn or Ignore (kubectl --validate=false sends Ignore):
    a body without unknown fields passes under any of them. dryRun: not supported, so refused
    (kubectl diff and --dry-run=server would otherwise change the object)."""
    if field_validation not in (None, "", "Strict", "Warn", "Ignore"):
        raise BadRequest(
            f"fieldValidation={field_validation} is not one of Strict, Warn, Ignore",
            field="fieldValidation",
        )
    if dry_run is not None:
        raise BadRequest(
            "dryRun is not supported: shoal has no server-side dry run (kubectl diff and "
            "--dry-run=server need one); use kubectl's --dry-run=client",
            field="dryRun",
        )


NOT_JSON = ("application/vnd.kubernetes.protobuf", "application/cbor", "application/yaml")


async def read_json(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in NOT_JSON:
        # Kubernetes clients send protobuf or CBOR first and fall back to JSON on a 415.
        raise UnsupportedMediaType(f"{media_type} is not served: send application/json")
    raw = await request.body()
    try:
        return jsoncodec.loads(raw)
    except ValueError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None


# Routes are matched in order, one after another: the kinds agents call every few seconds (node
# heartbeats, their VMs) go first.
HOT_KINDS = ("Node", "VirtualMachine")


def add_all_kind_routes(router: APIRouter) -> None:
    """Every kind's routes, on the app's own router: FastAPI matches the routes of an included
    router through an extra layer, which costs every request tens of microseconds per route."""
    for info in sorted(KINDS, key=lambda info: info.kind not in HOT_KINDS):
        add_kind_routes(router, info)
