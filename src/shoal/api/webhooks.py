"""Webhook deliveries from CI systems to a RunnerPool. A delivery only wakes the pool's sync
(the CI system's API stays the truth), so a repeated, late or reordered delivery changes
nothing twice. Bearer tokens are not asked for (GitHub cannot send one): a delivery is trusted
only when its signature matches the pool's webhook secret."""

import asyncio
import base64
import json
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from shoal.api.docs import ERRORS
from shoal.api.routes import PREFIX, Ctx, NameParam, NamespaceParam
from shoal.ci.runners.github import signature_matches
from shoal.errors import BadRequest, NotFound, Unauthorized

MAX_DELIVERY = 25 * 2**20  # GitHub caps a payload at 25 MB
WEBHOOK_SECRET_KEY = "webhookSecret"


def webhooks_router() -> APIRouter:
    router = APIRouter()

    @router.post(
        f"{PREFIX}/namespaces/{{namespace}}/runnerpools/{{name}}/webhook",
        tags=["RunnerPool"],
        summary="A GitHub webhook delivery (workflow_job) for a github RunnerPool",
        responses={
            202: {"description": "a workflow_job delivery: the pool syncs now"},
            **ERRORS,
        },
        status_code=200,
    )
    async def github_webhook(
        request: Request,
        ctx: Ctx,
        namespace: NamespaceParam,
        name: NameParam,
        x_github_event: Annotated[str | None, Header()] = None,
        x_hub_signature_256: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_DELIVERY:
            raise BadRequest(f"a delivery is at most {MAX_DELIVERY} bytes")
        pool = await asyncio.to_thread(ctx.store.get, "RunnerPool", namespace, name)
        if pool["spec"].get("provider") != "github":
            raise BadRequest(
                f"RunnerPool {name} is a {pool['spec'].get('provider')} pool: only github "
                "pools take webhook deliveries"
            )
        secret_name = pool["spec"]["credentialsRef"]["name"]
        try:
            secret = await asyncio.to_thread(ctx.store.get, "Secret", namespace, secret_name)
        except NotFound:
            secret = {"data": {}}
        encoded = (secret.get("data") or {}).get(WEBHOOK_SECRET_KEY)
        if not encoded:
            raise Unauthorized(
                f"RunnerPool {name}'s credentials Secret has no {WEBHOOK_SECRET_KEY!r}: "
                "deliveries cannot be checked, so none is taken"
            )
        if not signature_matches(base64.b64decode(encoded), body, x_hub_signature_256):
            raise Unauthorized("X-Hub-Signature-256 does not match the pool's webhook secret")
        if x_github_event == "workflow_job":
            try:
                action = json.loads(body).get("action")
            except (ValueError, AttributeError):
                raise BadRequest("a workflow_job delivery's body is a JSON object") from None
            # queued: a job may need a runner; completed: one may be cancelled, its runner not
            # needed. in_progress and waiting change nothing the pool acts on.
            if action in ("queued", "completed"):
                ctx.wake_runner_pool(namespace, name)
            return JSONResponse({"accepted": True, "event": x_github_event}, status_code=202)
        return JSONResponse({"accepted": False, "event": x_github_event})

    return router
