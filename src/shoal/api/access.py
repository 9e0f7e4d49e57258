"""Tokens: service-account tokens, join tokens, and the node credentials they are exchanged for."""

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from shoal.api.auth import Principal, allowed_verbs, authorize, bearer
from shoal.api.context import ApiContext
from shoal.api.docs import ERRORS
from shoal.api.routes import PREFIX, Caller, Ctx, NameParam, NamespaceParam, audit
from shoal.controllers import LEADER_TTL
from shoal.errors import Forbidden, NotFound, Unauthorized
from shoal.events import involved_stub
from shoal.jointoken import format_join_token
from shoal.model.meta import API_VERSION, StrictModel
from shoal.model.registry import KINDS
from shoal.store import events, lease
from shoal.store.store import Obj
from shoal.store.tokens import TokenRecord

MAX_TTL = 10 * 365 * 86400


class TokenRequestSpec(StrictModel):
    expirationSeconds: Annotated[int, Field(ge=60, le=MAX_TTL)] | None = None


class TokenRequest(StrictModel):
    apiVersion: str = API_VERSION
    kind: str = "TokenRequest"
    spec: TokenRequestSpec = Field(default_factory=TokenRequestSpec)


class RulesReviewSpec(StrictModel):
    namespace: Annotated[str, Field(max_length=63)] | None = None


class RulesReview(StrictModel):
    apiVersion: str = API_VERSION
    kind: str = "SelfSubjectRulesReview"
    spec: RulesReviewSpec = Field(default_factory=RulesReviewSpec)


class JoinTokenSpec(StrictModel):
    ttlSeconds: Annotated[int, Field(ge=60, le=MAX_TTL)] = 3600


class JoinTokenRequest(StrictModel):
    apiVersion: str = API_VERSION
    kind: str = "JoinToken"
    spec: JoinTokenSpec = Field(default_factory=JoinTokenSpec)


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def token_info(record: TokenRecord) -> dict[str, Any]:
    info: dict[str, Any] = {"id": record.id, "createdAt": _iso(record.created_at)}
    if record.expires_at is not None:
        info["expiresAt"] = _iso(record.expires_at)
    return info


def issued(kind: str, token: str, record: TokenRecord) -> dict[str, Any]:
    status: dict[str, Any] = {"token": token, "id": record.id}
    if record.expires_at is not None:
        status["expirationTimestamp"] = _iso(record.expires_at)
    return {"apiVersion": API_VERSION, "kind": kind, "status": status}


Listed = {
    200: {
        "description": "a list or a revocation",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **ERRORS,
}
Reviewed = {
    201: {
        "description": "the review: who the caller is and what it may do",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **ERRORS,
}
IssuedToken = {
    201: {
        "description": "the new token: shown once, stored only as a hash",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **ERRORS,
}


def access_router() -> APIRouter:
    router = APIRouter(tags=["Access"])
    sa_path = f"{PREFIX}/namespaces/{{namespace}}/serviceaccounts/{{name}}"

    def sync_sa_status(ctx: Ctx, namespace: str, name: str) -> None:
        records = ctx.tokens.list("ServiceAccount", namespace, name)

        def change(sa: Obj) -> Obj:
            sa["status"] = {"tokens": [token_info(r) for r in records]}
            return sa

        ctx.store.mutate("ServiceAccount", namespace, name, change)

    @router.post(
        sa_path + "/token", responses=IssuedToken, summary="Create a service-account token"
    )
    def create_token(
        ctx: Ctx,
        caller: Caller,
        namespace: NamespaceParam,
        name: NameParam,
        body: Annotated[TokenRequest | None, Body()] = None,
    ) -> JSONResponse:
        authorize(ctx.store, caller, "token", "ServiceAccount", namespace, plural="serviceaccounts")
        sa = ctx.store.get("ServiceAccount", namespace, name)
        ttl = body.spec.expirationSeconds if body else None
        token, record = ctx.tokens.issue("ServiceAccount", namespace, name, ttl)
        sync_sa_status(ctx, namespace, name)
        audit(ctx, caller, sa, "TokenCreated")
        return JSONResponse(issued("TokenRequest", token, record), status_code=201)

    @router.delete(
        sa_path + "/tokens/{token_id}",
        responses=Listed,
        summary="Revoke a service-account token",
    )
    def revoke_token(
        ctx: Ctx,
        caller: Caller,
        namespace: NamespaceParam,
        name: NameParam,
        token_id: Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]+$")],
    ) -> JSONResponse:
        authorize(ctx.store, caller, "token", "ServiceAccount", namespace, plural="serviceaccounts")
        record = ctx.tokens.get(token_id)
        if record is None or (
            record.subject_kind,
            record.subject_namespace,
            record.subject_name,
        ) != (
            "ServiceAccount",
            namespace,
            name,
        ):
            raise NotFound(f"serviceaccount {namespace}/{name} has no token {token_id}")
        ctx.tokens.revoke(token_id)
        sync_sa_status(ctx, namespace, name)
        audit(ctx, caller, ctx.store.get("ServiceAccount", namespace, name), "TokenRevoked")
        return JSONResponse(
            {"apiVersion": API_VERSION, "kind": "TokenRevocation", "status": {"id": token_id}}
        )

    @router.post(
        f"{PREFIX}/selfsubjectrulesreviews",
        responses=Reviewed,
        summary="What the caller may do in a namespace (or at cluster scope)",
    )
    def review_rules(
        ctx: Ctx, caller: Caller, body: Annotated[RulesReview | None, Body()] = None
    ) -> JSONResponse:
        """Who the token is and, per resource, the verbs it may use there: what a client (the
        web UI) reads to offer only what may be done. Decided by the rules every route
        enforces; the route enforces them anyway."""
        namespace = body.spec.namespace if body else None
        plurals = {info.kind: info.plural for info in KINDS}
        rules = [
            {"resources": ["*" if kind == "*" else plurals[kind]], "verbs": sorted(verbs)}
            for kind, verbs in sorted(allowed_verbs(ctx.store, caller, namespace).items())
        ]
        user = {"kind": caller.kind, "name": caller.name, "namespace": caller.namespace}
        return JSONResponse(
            {
                "apiVersion": API_VERSION,
                "kind": "SelfSubjectRulesReview",
                "spec": {"namespace": namespace},
                "status": {
                    "user": user,
                    "display": str(caller),
                    "clusterAdmin": caller.cluster_admin,
                    "resourceRules": rules,
                },
            },
            status_code=201,
        )

    @router.get(
        f"{PREFIX}/controllerstatus",
        summary="The controller's replicas, which one leads, and its epoch",
    )
    def controller_status(ctx: Ctx, caller: Caller) -> JSONResponse:
        """The replicas on this database (up while their presence lease holds, on the
        database's clock), the leader (the holder of the leader lease, which runs the loops)
        and its epoch, the fencing token its writes are checked against."""
        leader, replicas = lease.read_all(ctx.store)
        holder = lease.replica_of(leader.holder) if leader is not None and leader.live else None
        body = {
            "apiVersion": API_VERSION,
            "kind": "ControllerStatus",
            "servedBy": ctx.leadership.replica if ctx.leadership is not None else None,
            "leader": {
                "replica": holder,
                "address": leader.address if holder and leader else None,
                "epoch": leader.epoch if leader is not None else 0,
                "expiresInSeconds": round(leader.remaining, 3) if holder and leader else 0.0,
            },
            "replicas": [
                {
                    "replica": r.holder,
                    "address": r.address,
                    "up": r.live,
                    "leader": r.holder == holder,
                    "lastSeenSecondsAgo": round(max(0.0, ctx_ttl(ctx) - r.remaining), 3)
                    if r.live
                    else round(r.now - r.expires + ctx_ttl(ctx), 3),
                }
                for r in replicas
            ],
        }
        return JSONResponse(body)

    @router.post(f"{PREFIX}/jointokens", responses=IssuedToken, summary="Create a node join token")
    def create_join_token(
        ctx: Ctx, caller: Caller, body: Annotated[JoinTokenRequest | None, Body()] = None
    ) -> JSONResponse:
        _require_admin(caller)
        ttl = body.spec.ttlSeconds if body else JoinTokenSpec().ttlSeconds
        token, record = ctx.tokens.issue("Join", "", "join", ttl)
        answer = issued("JoinToken", format_join_token(token, ctx.ca_fingerprint), record)
        return JSONResponse(answer, status_code=201)

    @router.get(f"{PREFIX}/jointokens", responses=Listed, summary="List node join tokens")
    def list_join_tokens(ctx: Ctx, caller: Caller) -> JSONResponse:
        _require_admin(caller)
        items = [token_info(r) for r in ctx.tokens.list("Join", "", "join") if _live(r)]
        return JSONResponse({"apiVersion": API_VERSION, "kind": "JoinTokenList", "items": items})

    @router.delete(
        f"{PREFIX}/jointokens/{{token_id}}",
        responses=Listed,
        summary="Revoke a node join token",
    )
    def revoke_join_token(
        ctx: Ctx,
        caller: Caller,
        token_id: Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]+$")],
    ) -> JSONResponse:
        _require_admin(caller)
        record = ctx.tokens.get(token_id)
        if record is None or record.subject_kind != "Join":
            raise NotFound(f"join token {token_id} not found")
        ctx.tokens.revoke(token_id)
        return JSONResponse(
            {"apiVersion": API_VERSION, "kind": "TokenRevocation", "status": {"id": token_id}}
        )

    @router.post(
        f"{PREFIX}/nodes/{{name}}/credentials",
        responses=IssuedToken,
        summary="Exchange a join token for a node credential",
    )
    def node_credentials(request: Request, ctx: Ctx, name: NameParam) -> JSONResponse:
        record = ctx.tokens.verify(bearer(request))
        if record is None or record.subject_kind != "Join":
            raise Unauthorized("a valid, unexpired join token is needed to join a node")
        ctx.tokens.revoke_subject("Node", "", name)
        token, node_record = ctx.tokens.issue("Node", "", name)
        events.record(
            ctx.store,
            involved_stub("Node", None, name),
            "Joined",
            f"node {name} joined with join token {record.id}",
            source="api",
        )
        return JSONResponse(issued("NodeCredential", token, node_record), status_code=201)

    return router


def _live(record: TokenRecord) -> bool:
    return record.expires_at is None or record.expires_at > time.time()


def ctx_ttl(ctx: ApiContext) -> float:
    """The presence lease's length: how long before it expires a replica was last seen."""
    return float(ctx.leadership.ttl) if ctx.leadership is not None else LEADER_TTL


def _require_admin(caller: Principal) -> None:
    if not caller.cluster_admin:
        raise Forbidden(f"{caller} cannot manage join tokens: that takes a cluster admin")
