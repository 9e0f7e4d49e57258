"""GET /apis/shoal.dev/v1/usage: what VMs held over a window (shoal.store.usage), for charging
back and planning capacity."""

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from shoal.api.auth import authorize
from shoal.api.docs import ERRORS
from shoal.api.routes import PREFIX, Caller, Ctx
from shoal.errors import BadRequest, Forbidden
from shoal.model.meta import API_VERSION
from shoal.store import usage

Group = Literal["namespace", "image", "node"]
MAX_WINDOW = 366 * 86400


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def usage_router() -> APIRouter:
    router = APIRouter()

    @router.get(
        f"{PREFIX}/usage",
        tags=["Usage"],
        responses=ERRORS,
        summary="VM-seconds, vCPU-seconds and memory byte-seconds held over a window",
    )
    async def report(
        ctx: Ctx,
        caller: Caller,
        sinceSeconds: Annotated[
            int, Query(ge=1, le=MAX_WINDOW, description="The window: this many seconds back.")
        ] = 7 * 86400,
        untilSeconds: Annotated[
            int, Query(ge=0, le=MAX_WINDOW, description="...up to this many seconds back.")
        ] = 0,
        groupBy: Annotated[
            list[Group] | None, Query(description="namespace, image and/or node (repeatable).")
        ] = None,
        namespace: Annotated[
            str | None, Query(description="Only this namespace (required but for admins).")
        ] = None,
    ) -> JSONResponse:
        """What the VMs held (bound to a node, not saved as warm-pool entries) in the window,
        from the store's own record of every change (nothing sampled): per group, how many VMs,
        their seconds, vCPU-seconds and memory byte-seconds. A cluster admin may ask about every
        namespace; anyone else about a namespace where they may list VMs."""
        if untilSeconds >= sinceSeconds:
            raise BadRequest(
                f"untilSeconds ({untilSeconds}) must be less than sinceSeconds ({sinceSeconds})"
            )
        if namespace is None and not caller.cluster_admin:
            raise Forbidden(f"{caller} may ask for usage of one namespace only: give namespace")
        if namespace is not None:
            authorize(
                ctx.store, caller, "list", "VirtualMachine", namespace, plural="virtualmachines"
            )
        groups = tuple(dict.fromkeys(groupBy or ["namespace"]))

        def read() -> tuple[float, float, list[dict[str, object]]]:
            with ctx.store.snapshot() as conn:  # one consistent read, on the database's clock
                now = usage.read_now(conn)
                return usage.report(conn, now - sinceSeconds, now - untilSeconds, groups, namespace)

        start, end, items = await asyncio.to_thread(read)
        return JSONResponse(
            {
                "apiVersion": API_VERSION,
                "kind": "UsageReport",
                "since": _iso(start),
                "until": _iso(end),
                "groupBy": list(groups),
                "items": items,
            }
        )

    return router
